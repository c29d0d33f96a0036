"""Error types. Each carries data; the CLI maps types to exit codes and one-line messages (cli/errors.py)."""
from __future__ import annotations


class GpcrunError(Exception):
    """Base class: str(err) is the one-line message shown to people."""

    def __init__(self, message: str, **data: object) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class ModelFileError(GpcrunError):
    """A model path that cannot be read at all (missing, a directory, permission)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}", path=path, problem=problem)
        self.path = path
        self.problem = problem


class GGUFError(GpcrunError):
    """The file is readable but is not a valid GGUF (bad magic, truncated, absurd counts...)."""

    def __init__(self, path: str, problem: str, offset: int | None = None) -> None:
        where = f" (at byte {offset})" if offset is not None else ""
        super().__init__(f"{path}: {problem}{where}", path=path, problem=problem, offset=offset)
        self.path = path
        self.problem = problem
        self.offset = offset


class MissingShardError(GGUFError):
    """A split model whose shard files are not all present."""


class ServerBinaryNotFound(GpcrunError):
    def __init__(self, tried: list[str], name: str = "llama-server") -> None:
        super().__init__(f"{name} not found; tried: " + "; ".join(tried)
                         + ". Build it with: python3 scripts/build_llama.py", tried=tried, name=name)
        self.tried = tried


class ReceiptError(GpcrunError):
    """A receipt file that is missing, not JSON, or does not match the schema."""


class BatchError(GpcrunError):
    """A job file that cannot be used, or an output directory another gpcrun holds."""


class BatchLocked(BatchError):
    pass


class UnknownGpuError(GpcrunError):
    """--gpu NAME not in the spec table."""


class HubError(GpcrunError):
    """A Hugging Face Hub ref that cannot be resolved or read: no such repo, revision, file or quant; no
    network (or HF_HUB_OFFLINE=1) and nothing cached; access denied."""
