"""Index a Functions app as Microsoft's Python worker does; print what the host would be sent.

Run with ``.venv-worker/bin/python`` (Python 3.13, ``azure-functions-runtime``; see
``requirements-worker.in``), never in the pytest process::

    .venv-worker/bin/python tests/functions/worker_index.py APP_DIR

On Python 3.13 the host starts Microsoft's proxy worker, which owns the gRPC stream and hands
each request to the library ``azure_functions_runtime``: first ``worker_init_request`` (a
``WorkerInitRequest`` with the app's directory, wrapped with ``properties={"protos": ...,
"host": ...}``), which imports ``function_app.py`` and builds every function's metadata
(``index_function_app``, then ``process_indexed_function``, where ``Registry.add_indexed_function``
checks each function's parameters against its bindings); then ``functions_metadata_request``,
whose answer is the list of ``RpcFunctionMetadata`` the host loads. A failure at init is what
deploys as "0 functions found".

This script plays the proxy's part and nothing more: it calls those two library entry points as
the proxy does, with the app directory first on ``sys.path``. The proxy's ``protos`` are classes
generated from the host's ``FunctionRpc.proto``; the library only builds and reads messages with
them, so the messages it uses are declared here, field by field as that file has them, as real
protobuf classes (unknown fields and wrong types are refused as the generated classes refuse them).

Prints one JSON document: ``init`` (``status``, ``exception``) and, when init succeeded,
``metadata`` (``status``, ``functions``: each ``RpcFunctionMetadata`` with ``raw_bindings``
parsed from JSON). Exits 0 whatever the status: the caller judges it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, json_format, message_factory

PACKAGE = "AzureFunctionsRpcMessages"

# The messages the library builds or reads while a worker starts and indexes, as FunctionRpc.proto
# declares them: (field, number, type); "map<K,V>", "repeated T", a message or "Message.Enum".
ENUMS: dict[str, dict[str, dict[str, int]]] = {
    "StatusResult": {"Status": {"Failure": 0, "Success": 1, "Cancelled": 2}},
    "BindingInfo": {
        "Direction": {"in": 0, "out": 1, "inout": 2},
        "DataType": {"undefined": 0, "string": 1, "binary": 2, "stream": 3},
    },
    "RpcRetryOptions": {"RetryStrategy": {"exponential_backoff": 0, "fixed_delay": 1}},
}
MESSAGES: dict[str, list[tuple[str, int, str]]] = {
    "RpcException": [
        ("source", 3, "string"),
        ("stack_trace", 1, "string"),
        ("message", 2, "string"),
        ("is_user_exception", 4, "bool"),
        ("type", 5, "string"),
    ],
    "StatusResult": [
        ("status", 4, "StatusResult.Status"),
        ("result", 1, "string"),
        ("exception", 2, "RpcException"),
    ],
    "WorkerMetadata": [
        ("runtime_name", 1, "string"),
        ("runtime_version", 2, "string"),
        ("worker_version", 3, "string"),
        ("worker_bitness", 4, "string"),
        ("custom_properties", 5, "map<string,string>"),
    ],
    "WorkerInitRequest": [
        ("host_version", 1, "string"),
        ("capabilities", 2, "map<string,string>"),
        ("worker_directory", 4, "string"),
        ("function_app_directory", 5, "string"),
    ],
    "WorkerInitResponse": [
        ("worker_version", 1, "string"),
        ("capabilities", 2, "map<string,string>"),
        ("result", 3, "StatusResult"),
        ("worker_metadata", 4, "WorkerMetadata"),
    ],
    "FunctionsMetadataRequest": [("function_app_directory", 1, "string")],
    "BindingInfo": [
        ("type", 2, "string"),
        ("direction", 3, "BindingInfo.Direction"),
        ("data_type", 4, "BindingInfo.DataType"),
        ("properties", 5, "map<string,string>"),
    ],
    "RpcRetryOptions": [
        ("max_retry_count", 2, "int32"),
        ("delay_interval", 3, ".google.protobuf.Duration"),
        ("minimum_interval", 4, ".google.protobuf.Duration"),
        ("maximum_interval", 5, ".google.protobuf.Duration"),
        ("retry_strategy", 6, "RpcRetryOptions.RetryStrategy"),
    ],
    "RpcFunctionMetadata": [
        ("name", 4, "string"),
        ("directory", 1, "string"),
        ("script_file", 2, "string"),
        ("entry_point", 3, "string"),
        ("bindings", 6, "map<string,BindingInfo>"),
        ("is_proxy", 7, "bool"),
        ("status", 8, "StatusResult"),
        ("language", 9, "string"),
        ("raw_bindings", 10, "repeated string"),
        ("function_id", 13, "string"),
        ("managed_dependency_enabled", 14, "bool"),
        ("retry_options", 15, "RpcRetryOptions"),
        ("properties", 16, "map<string,string>"),
    ],
    "FunctionMetadataResponse": [
        ("function_metadata_results", 1, "repeated RpcFunctionMetadata"),
        ("result", 2, "StatusResult"),
        ("use_default_metadata_indexing", 3, "bool"),
    ],
    "StreamingMessage": [
        ("request_id", 1, "string"),
        ("worker_init_request", 17, "WorkerInitRequest"),
        ("functions_metadata_request", 29, "FunctionsMetadataRequest"),
    ],
}
_F = descriptor_pb2.FieldDescriptorProto
SCALARS = {"string": _F.TYPE_STRING, "bool": _F.TYPE_BOOL, "int32": _F.TYPE_INT32}


def _set_type(fd: Any, kind: str) -> None:
    if kind in SCALARS:
        fd.type = SCALARS[kind]
    elif kind.split(".")[0] in ENUMS and "." in kind:
        fd.type, fd.type_name = _F.TYPE_ENUM, f".{PACKAGE}.{kind}"
    else:
        fd.type = _F.TYPE_MESSAGE
        fd.type_name = kind if kind.startswith(".") else f".{PACKAGE}.{kind}"


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="indexing/FunctionRpc.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=["google/protobuf/duration.proto"],
    )
    for name, fields in MESSAGES.items():
        message = proto.message_type.add(name=name)
        for enum_name, values in ENUMS.get(name, {}).items():
            enum = message.enum_type.add(name=enum_name)
            for value_name, number in values.items():
                enum.value.add(name=value_name, number=number)
        for field_name, number, kind in fields:
            fd = message.field.add(name=field_name, number=number, label=_F.LABEL_OPTIONAL)
            if kind.startswith("repeated "):
                fd.label = _F.LABEL_REPEATED
                _set_type(fd, kind.removeprefix("repeated "))
            elif kind.startswith("map<"):
                key, value = kind[4:-1].split(",")
                entry_name = "".join(part.title() for part in field_name.split("_")) + "Entry"
                entry = message.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                _set_type(entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL), key)
                _set_type(entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL), value)
                fd.label = _F.LABEL_REPEATED
                fd.type, fd.type_name = _F.TYPE_MESSAGE, f".{PACKAGE}.{name}.{entry_name}"
            else:
                _set_type(fd, kind)
    return proto


def build_protos() -> SimpleNamespace:
    """The message classes, under the names the proxy's ``protos`` module gives them."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(duration_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(_file().SerializeToString())
    return SimpleNamespace(
        **{
            name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
            for name in MESSAGES
        }
    )


@dataclass
class WorkerRequest:
    """What the proxy hands the library: the gRPC message and, at init, the protos and host."""

    name: str
    request: Any
    properties: dict[str, Any] = field(default_factory=dict)


def _as_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


async def index(app_dir: str) -> dict[str, Any]:
    import azure_functions_runtime as worker
    from azure_functions_runtime.version import VERSION

    protos = build_protos()
    init = protos.StreamingMessage(
        request_id="indexing",
        worker_init_request=protos.WorkerInitRequest(
            host_version="4", function_app_directory=app_dir, worker_directory=app_dir
        ),
    )
    worker.start_threadpool_executor()
    try:
        answer = await worker.worker_init_request(
            WorkerRequest("WorkerInitRequest", init, {"protos": protos, "host": "127.0.0.1"})
        )
        result: dict[str, Any] = {
            "worker": {"azure-functions-runtime": VERSION, "python": sys.version.split()[0]},
            "init": _as_dict(answer.result),
        }
        if answer.result.status != protos.StatusResult.Success:
            return result
        request = protos.StreamingMessage(
            request_id="metadata",
            functions_metadata_request=protos.FunctionsMetadataRequest(function_app_directory=app_dir),
        )
        metadata = await worker.functions_metadata_request(WorkerRequest("WorkerMetadataRequest", request))
    finally:
        worker.stop_threadpool_executor()
    result["metadata"] = {
        "status": _as_dict(metadata.result),
        "use_default_metadata_indexing": metadata.use_default_metadata_indexing,
        "functions": [
            {**_as_dict(fn), "raw_bindings": [json.loads(raw) for raw in fn.raw_bindings]}
            for fn in metadata.function_metadata_results
        ],
    }
    return result


def main() -> None:
    app_dir = os.path.abspath(sys.argv[1])
    sys.path.insert(0, app_dir)  # as the worker has the app's own folder on sys.path
    os.chdir(app_dir)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)  # stdout carries only the JSON
    print(json.dumps(asyncio.run(index(app_dir)), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
