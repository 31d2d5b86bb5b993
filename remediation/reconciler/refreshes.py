"""A dataset's refresh: started when the safety core allows, one dataset at a time per account.

A refresh signs in to every data source of the dataset with its stored credential, and so does
every scheduled slot once the schedule is back on. So a refresh is a presentation too: where this
command has not seen a version accepted, one dataset per account (the safety core names those
accounts) is refreshed first, and the others follow once it completed
(:meth:`Refreshes.refresh_in_turn`). Before the schedule is turned on and the refresh is started,
the safety core is asked again; a refresh never starts while one runs, nor past the daily budget.
It is followed until it ends, and a failure a credential can cure is evidence at once
(:class:`~remediation.reconciler.refresh_evidence.RefreshEvidence`). Logs as the refresher
(``remediation.reconciler.refresher``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from remediation.clients.api_errors import ApiError, ThrottledPastDeadline
from remediation.clients.powerbi import PowerBIClient, RefreshAlreadyRunning, RefreshQuotaExceeded
from remediation.clients.powerbi_models import Refresh
from remediation.config.settings import Settings
from remediation.ledger import Ledger, Outcome, utc_day
from remediation.reconciler.refresh_evidence import CURABLE, DatasetPlan, RefreshEvidence, culprit, diagnose
from remediation.reconciler.report import Action
from remediation.reconciler.runs import Run
from remediation.safety.refreshing import RefreshDecision

__all__ = ["Refreshes"]

logger = logging.getLogger("remediation.reconciler.refresher")  # the refresher's log (runs.RUN_LOGGERS)


class Refreshes:
    """Starts and follows datasets' refreshes (thread-safe; one per refresher)."""

    def __init__(
        self,
        settings: Settings,
        *,
        powerbi: PowerBIClient,
        ledger: Ledger,
        evidence: RefreshEvidence,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval: float,
    ) -> None:
        self.settings = settings
        self.powerbi = powerbi
        self.ledger = ledger
        self.evidence = evidence
        self._clock = clock
        self._sleep = sleep
        self._poll_interval = poll_interval

    def refresh_in_turn(
        self,
        plan: DatasetPlan,
        run: Run,
        accounts: Sequence[str],
        decide: Callable[[], RefreshDecision],
        report: Callable[..., Outcome],
        *,
        check_running: bool,
    ) -> None:
        """Refresh the dataset, one dataset at a time per account whose version this command has
        not seen accepted (``accounts``, from the safety core): the first refresh proves the
        version (or records its rejection); the others follow once it completed. One whose outcome
        is still unknown when the follow-up ends leaves the others of its accounts for a later run.
        ``report`` records the dataset's outcome.
        """
        # An account is "kind:name|secret|version" (SourceEvidence.account): the name is who signs in.
        names = {
            f"refresh-proof:{account}": account.partition("|")[0].partition(":")[2] for account in accounts
        }
        keys = sorted(names)
        with contextlib.ExitStack() as held:
            for key in keys:
                held.enter_context(run.key_lock(key))
            with run.lock:
                pending = [k for k in keys if k in run.refresh_pending]
                unproven = [k for k in keys if k not in run.refresh_proven]
            if pending:
                who = ", ".join(names[k] for k in pending)
                report(
                    Action.DEFERRED,
                    f"not refreshed yet: another dataset's refresh is the first to sign in as {who} with "
                    "this version, and its outcome is not known yet (a refresh is a sign-in); the next "
                    "run continues",
                )
                return
            if unproven:
                final = self._refresh(plan, run, decide, report, check_running=check_running)
                with run.lock:
                    if final is not None and final.status == "Completed":
                        run.refresh_proven.update(unproven)
                    elif final is None or final.running:
                        run.refresh_pending.update(unproven)
                return
        # No account to prove, or all proven in this run (their locks released): refreshes follow
        # concurrently.
        self._refresh(plan, run, decide, report, check_running=check_running)

    def _refresh(
        self,
        plan: DatasetPlan,
        run: Run,
        decide: Callable[[], RefreshDecision],
        report: Callable[..., Outcome],
        *,
        check_running: bool,
    ) -> Refresh | None:
        """Retry the refresh: never while one runs, within the daily budget, schedule re-enabled;
        the safety core is asked again right before the schedule and the refresh (another run may
        have recorded evidence against the version since). The refresh is followed; a failure on
        credentials is evidence at once (:meth:`RefreshEvidence.learn_from_failure`). Returns how
        it ended (None: not started, or not seen); ``report`` records the dataset's outcome.

        ``check_running`` reads the history first; it is skipped when this run has just read it
        (a refresh started since is refused by Power BI and reported as running, not retried).
        """
        workspace_id, dataset_id = plan.workspace_id, plan.dataset_id

        now = self._clock()
        day = utc_day(now)
        try:
            history = (
                self.powerbi.get_refresh_history_in_group(workspace_id, dataset_id, top=1)
                if check_running
                else []
            )
            if history and history[0].running:
                report(
                    Action.REFRESH_RUNNING,
                    "a refresh is already running: not starting another",
                    refresh_request_id=history[0].request_id,
                    refresh_state=history[0].status,
                )
                return None
            used = self.ledger.refresh_posts(dataset_id, day)
            if used >= self.settings.refresh_daily_budget:
                report(
                    Action.REFRESH_BUDGET,
                    f"{used} refreshes started today (budget "
                    f"{self.settings.refresh_daily_budget}); the next scheduled refresh will run",
                )
                return None
            schedule = self.powerbi.get_refresh_schedule_in_group(workspace_id, dataset_id)
            if run.dry_run:
                again = "" if schedule.enabled else " and re-enable its schedule"
                report(Action.WOULD_REFRESH, f"would refresh the dataset{again}")
                return None
            again_now = decide()
            if not again_now.allowed:
                assert again_now.action is not None  # a refusal names its action
                report(
                    again_now.action,
                    "not refreshed, and its schedule is left as it is: evidence against a data source's "
                    "credential arrived meanwhile: " + ", ".join(again_now.waiting),
                )
                return None
            note = ""
            if not schedule.enabled and schedule.days:
                self.powerbi.update_refresh_schedule_in_group(workspace_id, dataset_id, True)
                note = " (schedule re-enabled)"
            self.ledger.record_refresh_post(dataset_id, day)
            request = self.powerbi.refresh_dataset_in_group(workspace_id, dataset_id)
        except RefreshAlreadyRunning:
            report(Action.REFRESH_RUNNING, "a refresh is already running: not starting another")
            return None
        except RefreshQuotaExceeded as exc:
            report(Action.REFRESH_BUDGET, f"Power BI's daily refresh limit is reached: {exc}")
            return None
        except ThrottledPastDeadline as exc:
            report(Action.DEFERRED, f"not refreshed: {exc}")
            return None
        except ApiError as exc:
            report(Action.FAILED, f"could not refresh: {exc}")
            return None
        final = self._follow(workspace_id, dataset_id, request.request_id, run)
        state = final.status if final is not None else "Unknown"
        reason = f"refresh {state}"
        action = Action.REFRESHED
        if final is not None and final.failed:
            diagnosis = diagnose(final)
            reason += f": {diagnosis.message}"
            if diagnosis.category in CURABLE:
                # The refresh was a sign-in with the version: its failure is evidence now.
                action = Action.FAILED
                credential_bearing = list(plan.credential_bearing)
                self.evidence.learn_from_failure(
                    diagnosis, final, culprit(final, credential_bearing), plan.resolved, run
                )
        elif final is None or final.running:
            reason += " within this run's time; it goes on in Power BI"
        report(action, reason + note, refresh_request_id=request.request_id, refresh_state=state)
        return final

    def _follow(self, workspace_id: str, dataset_id: str, request_id: str, run: Run) -> Refresh | None:
        """Poll the history until the refresh ``request_id`` ends, the follow-up time limit or the
        run's deadline passes."""
        deadline = self._clock() + self.settings.refresh_timeout_seconds
        if run.deadline is not None:
            deadline = min(deadline, run.deadline)
        interval = min(self._poll_interval, 1.0)
        last: Refresh | None = None
        while True:
            try:
                for entry in self.powerbi.get_refresh_history_in_group(workspace_id, dataset_id, top=5):
                    if str(entry.request_id).lower() == request_id:  # a GUID: an entry without id never is
                        last = entry
                        break
            except ApiError as exc:
                logger.warning("following refresh %s: %s", request_id, exc)
            if last is not None and not last.running:
                return last
            if self._clock() + interval > deadline:
                return last
            self._sleep(interval)
            interval = min(interval * 2, self._poll_interval)
