"""Typed, user-facing failures.

Every error here carries one sentence a person can act on. The CLI prints it
on one line and exits 2; the GUI shows it in a banner. Anything that is not a
MixdeskError is a bug and keeps its traceback.
"""

from __future__ import annotations


class MixdeskError(Exception):
    """Base class: a failure caused by input or environment, not by a bug."""


class ModelFormatError(MixdeskError):
    """A model folder is missing a file, or a file in it is damaged.

    The message names the file.
    """


class UnsupportedModelError(MixdeskError):
    """The model's architecture or a feature of its config is not supported."""


class TokenizerError(ModelFormatError):
    """The tokenizer files are missing or unreadable."""


class InvalidRequestError(MixdeskError):
    """A generation request is out of range (bad sampling value, prompt too long)."""


class ContextOverflowError(InvalidRequestError):
    """The prompt does not fit the model's context window."""


class DemoBuildError(MixdeskError):
    """The demo model could not be built (source weights missing, disk full)."""


class NoGPUError(MixdeskError):
    """A CUDA GPU was asked for and none is available."""


class OutOfVRAMError(MixdeskError):
    """The plan does not fit the VRAM budget (the message says what would fit), or the GPU
    ran out of memory mid-answer (the message says what to free; the text so far is kept)."""


class DownloadError(MixdeskError):
    """A download failed (network, disk full, checksum)."""


class GatedRepoError(DownloadError):
    """The hub repo needs an access token the user has not given."""


class RecipeError(MixdeskError):
    """A quantization recipe is unknown or does not fit the model."""


class OutputFolderError(MixdeskError):
    """An output folder is in use: not empty and not a job that can be resumed."""


class DiskSpaceError(MixdeskError):
    """Not enough free disk for the files a job will write; the message gives both sizes."""


class JobCancelled(MixdeskError):
    """A long job (quantization) was cancelled; running it again resumes it."""


class ServerConfigError(MixdeskError):
    """`mixdesk serve` cannot start as asked (open bind without an API key, port in use)."""


class RemoteEngineError(MixdeskError):
    """A remote OpenAI-compatible server cannot be reached or answered with an error."""


class RemoteAuthError(RemoteEngineError):
    """A remote server refused the API key (HTTP 401 or 403)."""


class ChatStoreError(MixdeskError):
    """The chat database cannot be opened or written."""


class ChatDatabaseCorruptError(ChatStoreError):
    """The chat database file is damaged or is not a mixdesk database."""


class ChatDatabaseLockedError(ChatStoreError):
    """Another process holds the chat database locked."""


class ChatImportError(ChatStoreError):
    """A file given to import is not a mixdesk chat export."""
