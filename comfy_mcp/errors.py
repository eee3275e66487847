"""Every failure comfy-mcp reports, as one exception tree.

Each error's ``str()`` says what happened and what to do about it, in words an assistant
can pass to a person. Nothing in this module imports MCP.

ComfyError
    ConfigError                 a setting is missing or malformed
    ComfyUnreachable            nothing answered at the configured URL
    ComfyTimeout                ComfyUI accepted the connection but did not answer in time
    ComfyHTTPError              an HTTP status or body we did not expect
        UploadTooLarge          413: the request body is over ComfyUI's size limit
        PathRefused             400/403 from /view or /upload: ComfyUI refused a path
    PromptRejected              400 from POST /prompt, with per-node reasons
    MissingNodes                the graph uses node classes this ComfyUI does not have
    InvalidParameter            a value we can tell is wrong before queueing anything
    WorkflowError               a template or graph is malformed or unknown
        GraphInvalid            our check against /object_info found problems in the graph
    PromptNotFound              ComfyUI knows nothing about a prompt id
    JobStillRunning             our wait limit ran out; the job goes on (not a failure)
    JobError                    a queued job ended without images (carries the prompt id)
        JobFailed               the job raised an error inside a node
            OutOfMemory         ... and the error was running out of (V)RAM
        JobInterrupted          someone interrupted or cancelled the job
        JobLost                 the job vanished from queue and history (ComfyUI restarted)
        ContactLost             ComfyUI stopped answering while we followed the job
        FollowFailed            an answer we did not expect stopped us following the job
        NoOutputs               the job finished but produced no outputs
"""

from __future__ import annotations

from collections.abc import Iterable


class ComfyError(Exception):
    """Base class of every error comfy-mcp raises on purpose."""


class ConfigError(ComfyError):
    """Raised when a setting is missing or cannot be parsed."""


class ComfyUnreachable(ComfyError):
    """Raised when no ComfyUI answers at the configured address."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(
            f"ComfyUI is not reachable at {url} ({reason}). Start ComfyUI, or point comfy-mcp "
            "at the right server with the COMFYUI_URL environment variable (for example "
            "COMFYUI_URL=http://127.0.0.1:8188). ComfyUI only listens on 127.0.0.1 unless it "
            "was started with --listen."
        )


class ComfyTimeout(ComfyError):
    """Raised when ComfyUI accepts a request but does not answer in time."""

    def __init__(self, url: str, seconds: float) -> None:
        self.url = url
        self.seconds = seconds
        super().__init__(
            f"ComfyUI at {url} did not answer within {seconds:g} s. It may be busy loading a "
            "model; try again, or raise COMFY_MCP_HTTP_TIMEOUT."
        )


class ComfyHTTPError(ComfyError):
    """Raised for an HTTP status or body that the protocol does not lead us to expect."""

    def __init__(self, method: str, url: str, status: int, excerpt: str, hint: str = "") -> None:
        self.method = method
        self.url = url
        self.status = status
        self.excerpt = excerpt
        text = f"ComfyUI answered {method} {url} with HTTP {status}"
        if excerpt:
            text += f": {excerpt}"
        if hint:
            text += f". {hint}"
        super().__init__(text)


class UploadTooLarge(ComfyHTTPError):
    """Raised on HTTP 413: the body is larger than ComfyUI's --max-upload-size."""


class PathRefused(ComfyHTTPError):
    """Raised when ComfyUI refuses a file path (400/403 from /view or /upload)."""


class NodeProblem:
    """One reason ComfyUI (or our own check) gives for refusing a node input."""

    __slots__ = ("node_id", "class_type", "title", "input_name", "message")

    def __init__(
        self,
        node_id: str,
        class_type: str,
        message: str,
        *,
        input_name: str | None = None,
        title: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.class_type = class_type
        self.title = title
        self.input_name = input_name
        self.message = message

    def __str__(self) -> str:
        where = f"node {self.node_id} ({self.title or self.class_type})"
        if self.input_name:
            where += f", input '{self.input_name}'"
        return f"{where}: {self.message}"

    def __repr__(self) -> str:
        return f"NodeProblem({self!s})"


class PromptRejected(ComfyError):
    """Raised when ComfyUI refuses to queue a graph (HTTP 400 from POST /prompt)."""

    def __init__(self, summary: str, problems: Iterable[NodeProblem] = ()) -> None:
        self.summary = summary
        self.problems = list(problems)
        lines = [f"ComfyUI refused the workflow: {summary}"]
        lines += [f"- {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class MissingNodes(ComfyError):
    """Raised when a graph uses node classes the connected ComfyUI does not provide."""

    def __init__(self, class_types: Iterable[str]) -> None:
        self.class_types = sorted(set(class_types))
        names = ", ".join(self.class_types)
        super().__init__(
            f"This ComfyUI has no node class {names}. These nodes come from custom node "
            "packs: install the packs that provide them (for example with ComfyUI-Manager), "
            "restart ComfyUI, and try again."
        )


class InvalidParameter(ComfyError):
    """Raised when a parameter is wrong in a way we can see before queueing."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(f"Parameter '{name}': {message}")


class WorkflowError(ComfyError):
    """Raised when a template or user graph is malformed or unknown."""


class GraphInvalid(WorkflowError):
    """Raised when a graph fails our check against the server's node definitions."""

    def __init__(self, problems: Iterable[NodeProblem]) -> None:
        self.problems = list(problems)
        lines = ["The workflow would be refused by this ComfyUI, so it was not queued:"]
        lines += [f"- {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class PromptNotFound(ComfyError):
    """Raised when ComfyUI has no record of a prompt id in its queue or history."""

    def __init__(self, prompt_id: str, recorded: str = "") -> None:
        self.prompt_id = prompt_id
        if recorded:
            why = (f"comfy-mcp recorded it as generation {recorded}; ComfyUI keeps no trace "
                   "of cancelled jobs, and forgets all jobs when it restarts")
        else:
            why = ("the id may be mistyped, or ComfyUI was restarted since (it keeps history "
                   "in memory only)")
        super().__init__(f"ComfyUI has no job with prompt id {prompt_id} in its queue or "
                         f"history: {why}.")


class JobStillRunning(ComfyError):
    """Raised when the wait limit ran out while the job was still queued or running."""

    def __init__(self, prompt_id: str, waited: float, state: str) -> None:
        self.prompt_id = prompt_id
        self.waited = waited
        self.state = state
        self.generation_id: int | None = None  # set once the history has recorded it
        super().__init__(
            f"The job is still {state} after {waited:.0f} s; it goes on in ComfyUI. "
            f"Fetch it later with get_result(prompt_id={prompt_id!r})."
        )


class JobError(ComfyError):
    """Raised when a queued job ends without a usable result."""

    def __init__(self, prompt_id: str, message: str) -> None:
        self.prompt_id = prompt_id
        super().__init__(f"{message} (prompt id {prompt_id})")


class JobFailed(JobError):
    """Raised when a node raised an exception while the job ran."""

    def __init__(
        self,
        prompt_id: str,
        *,
        node_id: str | None,
        class_type: str | None,
        exception_type: str,
        exception_message: str,
        hint: str = "",
    ) -> None:
        self.node_id = node_id
        self.class_type = class_type
        self.exception_type = exception_type
        self.exception_message = exception_message.strip()
        where = f" in node {node_id} ({class_type})" if node_id else ""
        text = f"The job failed{where}: {exception_type}: {self.exception_message}"
        if hint:
            text += f"\n{hint}"
        super().__init__(prompt_id, text)


class OutOfMemory(JobFailed):
    """Raised when the job failed because the GPU (or CPU) ran out of memory."""

    HINT = (
        "ComfyUI ran out of memory. Try a lower resolution (width/height), a smaller "
        "batch_size or fewer steps, or close other programs using the GPU, then try again."
    )


class JobInterrupted(JobError):
    """Raised when the job was interrupted or cancelled before it finished."""

    def __init__(self, prompt_id: str, node_id: str | None = None) -> None:
        where = f" at node {node_id}" if node_id else ""
        super().__init__(prompt_id, f"The job was interrupted{where} before it finished")


class JobLost(JobError):
    """Raised when a job disappears from both queue and history, as after a restart."""

    def __init__(self, prompt_id: str) -> None:
        super().__init__(
            prompt_id,
            "The job was lost: it is no longer in ComfyUI's queue or history, which happens "
            "when ComfyUI restarts mid-job or someone clears the queue. Generate it again",
        )


class ContactLost(JobError):
    """Raised when ComfyUI stopped answering while we followed a job, until the wait ended."""

    def __init__(self, prompt_id: str, cause: Exception) -> None:
        self.cause = cause
        if isinstance(cause, ComfyUnreachable):
            what = f"ComfyUI at {cause.url} stopped answering ({cause.reason})"
        elif isinstance(cause, ComfyHTTPError):
            what = f"ComfyUI answered HTTP {cause.status}"
        else:
            what = "ComfyUI stopped answering in time"
        super().__init__(
            prompt_id,
            f"{what} while the job ran; it may have crashed or been stopped. When it answers "
            "again, get_result with this prompt id tells whether the job survived",
        )


class FollowFailed(JobError):
    """Raised when an unexpected answer from ComfyUI stopped us following a queued job."""

    def __init__(self, prompt_id: str, cause: BaseException) -> None:
        self.cause = cause
        detail = f"{type(cause).__name__}: {cause}"[:300]
        super().__init__(
            prompt_id,
            f"comfy-mcp could not follow the job ({detail}). It may still be running in "
            "ComfyUI; get_result with this prompt id fetches it",
        )


class NoOutputs(JobError):
    """Raised when a job finished successfully but produced no output files."""

    def __init__(self, prompt_id: str) -> None:
        super().__init__(
            prompt_id,
            "The job finished but returned no outputs: the workflow has no output node that "
            "saves or previews an image, or the output node produced nothing",
        )
