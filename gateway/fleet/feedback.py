"""Update operation statuses as DDI feedback: ``execution``, ``result.finished``, ``progress``, ``details``."""

from __future__ import annotations

from typing import Any

from gateway.updates.operation import Operation, Status

_EXECUTION: dict[Status, tuple[str, str]] = {
    Status.STARTED: ("proceeding", "none"),
    Status.DOWNLOADING: ("download", "none"),
    Status.DOWNLOADED: ("downloaded", "none"),
    Status.INSTALLING: ("proceeding", "none"),
    Status.INSTALLED: ("proceeding", "none"),
    Status.FINISHED_SUCCESS: ("closed", "success"),
    Status.FINISHED_ERROR: ("closed", "failure"),
    # canceled on the gateway (a Kanto cancel), not by the server: the action will not go on,
    # which DDI says with closed/failure (a server's own cancel is answered on its cancelAction)
    Status.FINISHED_CANCELED: ("closed", "failure"),
}


def ddi_status(execution: str, finished: str, details: list[str], progress: tuple[int, int] | None = None
               ) -> dict[str, Any]:
    """A DDI ``status`` object.

    :param execution: ``proceeding``, ``download``, ``downloaded``, ``closed``, ``rejected`` ...
    :param finished: ``success``, ``failure`` or ``none``.
    :param details: human-readable lines.
    :param progress: ``(cnt, of)``, when known.
    """
    result: dict[str, Any] = {"finished": finished}
    if progress is not None:
        result["progress"] = {"cnt": progress[0], "of": progress[1]}
    return {"execution": execution, "result": result, "details": details}


def operation_feedback(operation: Operation) -> dict[str, Any] | None:
    """The feedback for the operation's current step; None for steps the server is not told of
    (a download-only operation ends at ``downloaded``). A ``FINISHED_CANCELED`` operation was canceled on
    the gateway: the server's own cancels are answered on their cancelAction instead.

    :param operation: the operation of a DDI action.
    """
    if operation.status == Status.FINISHED_SUCCESS and operation.action == "download":
        return None
    execution = _EXECUTION.get(operation.status)
    if execution is None:
        return None
    names = ", ".join(f"{m.name} {m.version}".strip() for m in operation.modules)
    step = "canceled" if operation.status == Status.FINISHED_CANCELED else operation.status.value.lower().replace("_", " ")
    detail = f"{step}: {names}"
    details = [detail] + ([operation.message] if operation.message else [])
    if operation.status == Status.FINISHED_CANCELED:
        details.append("canceled on the gateway (an update cancel request), not by the server: nothing was installed")
    return ddi_status(*execution, details, (operation.installed, len(operation.modules)))
