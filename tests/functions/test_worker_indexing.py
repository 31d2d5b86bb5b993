"""Microsoft's Python worker indexes ``function_app.py`` and loads all seven functions (eight
when the Eventstream connection is set: ``job_events`` exists only then).

Before anything runs, the worker imports ``function_app.py``, checks every function's parameters
against its bindings, and sends the host each function's metadata; an app that fails there
deploys with "0 functions found". The other tests here drive the functions through
``azure.functions``' converters; these run the worker's own indexing: ``worker_index.py``, in a
child process on ``.venv-worker`` (Python 3.13, ``azure-functions-runtime`` as pinned in
``requirements-worker.txt``; ``make test`` creates it), calls the library's ``worker_init_request``
and ``functions_metadata_request`` as Microsoft's proxy worker does, and prints the metadata.

Without ``.venv-worker`` these are skipped, and fail under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.functions.host import FUNCTIONS
from tests.support.ports import in_ci

ROOT = Path(__file__).resolve().parents[2]
WORKER_PYTHON = ROOT / ".venv-worker" / "bin" / "python"
SCRIPT = Path(__file__).with_name("worker_index.py")


def _http(route: str, method: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "httpTrigger",
            "direction": "IN",
            "name": "req",
            "authLevel": "FUNCTION",
            "route": route,
            "methods": [method],
        },
        {"type": "http", "direction": "OUT", "name": "$return"},
    ]


# What function_app.py declares, as the host receives it (each function's raw bindings): the
# trigger and binding types, directions, routes, methods, auth level and %SETTING% expressions,
# left for the host to resolve.
DECLARED: dict[str, list[dict[str, Any]]] = {
    "keyvault_events": [{"type": "eventGridTrigger", "direction": "IN", "name": "event"}],
    "refresh_events": [{"type": "eventGridTrigger", "direction": "IN", "name": "event"}],
    "remediation_work": [
        {
            "type": "queueTrigger",
            "direction": "IN",
            "name": "msg",
            "queueName": "%REMEDIATION_WORK_QUEUE%",
            "connection": "AzureWebJobsStorage",
        }
    ],
    "sweep": [
        {
            "type": "timerTrigger",
            "direction": "IN",
            "name": "timer",
            "schedule": "%REMEDIATION_SWEEP_SCHEDULE%",
            "runOnStartup": False,
            "useMonitor": True,
        }
    ],
    "remediate": _http("remediate", "POST"),
    "remediations": _http("remediations", "GET"),
    "remediation_status": _http("remediations/{correlationId}", "GET"),
}
# With REMEDIATION_EVENTSTREAM_CONNECTION set (its value is the host's to use, never the worker's).
EVENTSTREAM: dict[str, list[dict[str, Any]]] = {
    "job_events": [
        {
            "type": "eventHubTrigger",
            "direction": "IN",
            "name": "events",
            "dataType": "BINARY",
            "connection": "REMEDIATION_EVENTSTREAM_CONNECTION",
            "eventHubName": "%REMEDIATION_EVENTSTREAM_HUB%",
            "cardinality": "MANY",
            "consumerGroup": "%REMEDIATION_EVENTSTREAM_CONSUMER_GROUP%",
        }
    ]
}


def index(app_dir: Path, home: Path, settings: dict[str, str] | None = None) -> dict[str, Any]:
    """What ``worker_index.py`` printed for ``app_dir``: the worker's init status and metadata.
    ``settings``: app settings the worker process has besides the bare ones below."""
    if not WORKER_PYTHON.exists():
        message = ".venv-worker is missing: `make test` creates it (it needs Python 3.13)"
        if in_ci():
            pytest.fail(f"{message}. (Under CI=true this fails instead of skipping.)", pytrace=False)
        pytest.skip(message)
    env = {
        # Only what a worker process has before the app's own settings: the app must index
        # without any (%SETTING% expressions are the host's to resolve, not the worker's).
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsScriptRoot": str(app_dir),
        "PYTHONDONTWRITEBYTECODE": "1",  # no cpython-313 pycs beside the deployed 3.11 ones
        **(settings or {}),
    }
    done = subprocess.run(
        [str(WORKER_PYTHON), str(SCRIPT), str(app_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=app_dir,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return index(ROOT, tmp_path_factory.mktemp("worker-home"))


@pytest.fixture(scope="module")
def indexed_with_eventstream(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = {
        "REMEDIATION_EVENTSTREAM_CONNECTION": "@Microsoft.KeyVault(VaultName=kv;SecretName=eventstream)",
        "REMEDIATION_EVENTSTREAM_HUB": "es_00000000-0000-0000-0000-000000000000",
        "REMEDIATION_EVENTSTREAM_CONSUMER_GROUP": "$Default",
    }
    return index(ROOT, tmp_path_factory.mktemp("worker-home-es"), settings)


def _functions(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    init = result["init"]
    assert init["status"] == "Success", init.get("exception", {}).get("message")
    assert result["metadata"]["status"]["status"] == "Success"
    return {fn["name"]: fn for fn in result["metadata"]["functions"]}


def test_the_worker_indexes_the_app_without_an_error(indexed: dict[str, Any]) -> None:
    assert indexed["worker"]["python"].startswith("3.13.")
    refusal = indexed["init"].get("exception", {}).get("message")
    assert indexed["init"] == {"status": "Success", "result": ""}, refusal  # no exception at all
    assert indexed["metadata"]["status"] == {"status": "Success", "result": ""}
    assert indexed["metadata"]["use_default_metadata_indexing"] is False  # the worker indexed it


def test_all_seven_functions_load_as_function_app_declares_them(indexed: dict[str, Any]) -> None:
    functions = _functions(indexed)

    assert sorted(functions) == sorted(DECLARED) == sorted(set(FUNCTIONS) - set(EVENTSTREAM))
    assert len({fn["function_id"] for fn in functions.values()}) == 7
    for name, fn in functions.items():
        assert fn["raw_bindings"] == DECLARED[name], name
        assert (fn["script_file"], fn["entry_point"], fn["language"]) == ("function_app.py", name, "python")
        assert Path(fn["directory"]) == ROOT
        assert fn["properties"] == {"worker_indexed": "True"}
        assert "retry_options" not in fn  # no retry policy: redelivery is Event Grid's and the queue's


def test_with_the_eventstream_connection_the_event_hubs_function_loads_too(
    indexed_with_eventstream: dict[str, Any],
) -> None:
    functions = _functions(indexed_with_eventstream)
    declared = {**DECLARED, **EVENTSTREAM}

    assert sorted(functions) == sorted(declared) == sorted(FUNCTIONS)  # the ones our tests drive
    for name, fn in functions.items():
        assert fn["raw_bindings"] == declared[name], name
        assert "retry_options" not in fn  # Event Hubs checkpoints the batch; the sweep heals the rest
    typed = {b: (i["type"], i["direction"]) for b, i in functions["job_events"]["bindings"].items()}
    assert typed == {"events": ("eventHubTrigger", "in")}


def test_each_binding_has_the_type_and_direction_the_host_is_told(indexed: dict[str, Any]) -> None:
    for name, fn in _functions(indexed).items():
        typed = {
            binding: (info["type"], info["direction"], info["data_type"])
            for binding, info in fn["bindings"].items()
        }
        assert typed == {
            raw["name"]: (raw["type"], raw["direction"].lower(), "undefined") for raw in DECLARED[name]
        }, name


TINY_APP = """
    import azure.functions as func

    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


    @app.function_name("ping")
    @app.route(route="ping", methods=["GET"])
    def ping(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("pong")


    @app.function_name("work")
    @app.queue_trigger(arg_name="msg", queue_name="%WORK_QUEUE%", connection="AzureWebJobsStorage")
    def work(msg: func.QueueMessage) -> None:
        pass
"""


def _tiny_app(tmp_path: Path, *replace: tuple[str, str]) -> Path:
    source = textwrap.dedent(TINY_APP)
    for old, new in replace:
        assert old in source
        source = source.replace(old, new)
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "function_app.py").write_text(source, encoding="utf-8")
    return app_dir


def test_a_tiny_app_that_matches_its_bindings_indexes(tmp_path: Path) -> None:
    """The control for the refusals below: the same app, unbroken, loads both functions."""
    assert sorted(_functions(index(_tiny_app(tmp_path), tmp_path))) == ["ping", "work"]


MISSING = "the following parameters are declared in Python but not in the function definition"


@pytest.mark.parametrize(
    ("change", "function", "refusal"),
    [
        pytest.param(
            ("def ping(req:", "def ping(request:"),
            "ping",
            MISSING + " (function.json or function decorators):  {'request'}",
            id="parameter-named-otherwise-than-its-binding",
        ),
        pytest.param(
            ("def ping(req: func.HttpRequest)", "def ping(req: func.HttpRequest, extra: str)"),
            "ping",
            MISSING + " (function.json or function decorators):  {'extra'}",
            id="parameter-without-a-binding",
        ),
        pytest.param(
            ("def work(msg: func.QueueMessage)", "def work(msg: func.HttpRequest)"),
            "work",
            "do not match the corresponding function parameter's Python type annotation HttpRequest",
            id="annotation-that-its-binding-cannot-convert",
        ),
    ],
)
def test_the_worker_refuses_an_app_whose_parameter_does_not_match_its_binding(
    tmp_path: Path, change: tuple[str, str], function: str, refusal: str
) -> None:
    """The check is really running: a broken copy fails at init, as it would deploy with 0 functions."""
    result = index(_tiny_app(tmp_path, change), tmp_path)

    assert result["init"]["status"] == "Failure"
    assert "metadata" not in result
    message = result["init"]["exception"]["message"]
    assert message.startswith(f"FunctionLoadError: cannot load the {function} function: "), message
    assert refusal in message, message
