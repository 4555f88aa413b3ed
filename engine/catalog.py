"""The models page's recommended catalog, and hub search with download sizes.

Pure engine code (no Qt, no torch). Search goes through huggingface_hub's HfApi,
so it honours HF_ENDPOINT; sizes are what `engine.hub.download` would fetch
(safetensors, index, config, tokenizer), not the whole repo.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mixdesk.engine.errors import DownloadError
from mixdesk.engine.hub import hub_errors, remote_files

log = logging.getLogger("mixdesk.engine.catalog")


@dataclass(frozen=True)
class CatalogEntry:
    """One recommended model.

    Attributes:
        repo_id: the hub id.
        title: what the page shows.
        blurb: one or two sentences: what it is, what to do with it.
        action: "quantize" (download, then the wizard), "import" (a published HQQ
            checkpoint: download, then `mixdesk import-hqq`), "download" (runs as is)
            or "server" (too big for one GPU: use a server through the remote engine).
        size_gb: the download, approximately (what `engine.hub` fetches).
        gated: the repo asks for a hub token.
    """

    repo_id: str
    title: str
    blurb: str
    action: str
    size_gb: float
    gated: bool = False


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        "mistralai/Mixtral-8x7B-Instruct-v0.1", "Mixtral-8x7B-Instruct-v0.1",
        "The original, 47B parameters in bf16. Download it, then quantize it here for your "
        "GPU: the wizard picks the recipe for your VRAM (from 4 GB, with experts streamed "
        "from host memory; all on the GPU from 21.5 GB, 3-bit).",
        "quantize", 93.4, gated=True),
    CatalogEntry(
        "mobiuslabsgmbh/Mixtral-8x7B-Instruct-v0.1-hf-attn-4bit-moe-2bit-metaoffload-HQQ",
        "Mixtral-8x7B-Instruct HQQ (published card)",
        "The published HQQ checkpoint: attention 4-bit, experts 2-bit, 8-bit meta. "
        "Imported with `mixdesk import-hqq` instead of quantized here.",
        "import", 24.2),
    CatalogEntry(
        "mistralai/Mistral-7B-Instruct-v0.3", "Mistral-7B-Instruct-v0.3",
        "A dense 7B model (the engine runs it as one expert). Fits a 16 GB card in bf16, "
        "or quantize it for an 8 GB one.",
        "quantize", 14.5, gated=True),
    CatalogEntry(
        "mistralai/Mixtral-8x22B-Instruct-v0.1", "Mixtral-8x22B-Instruct-v0.1",
        "141B parameters: beyond one consumer GPU. Serve it with vLLM on a 4-GPU machine "
        "(tensor-parallel 4, int4) and add that server here (model menu → Add a server…).",
        "server", 281.0, gated=True),
)


@dataclass(frozen=True)
class HubModel:
    """One hub search result.

    Attributes:
        repo_id: the hub id.
        size_bytes: what a download would fetch; None when it could not be read.
        files: how many files that is.
        downloads: the hub's download count, when given.
        gated: the repo asks for a token.
        note: why the size is missing (no safetensors, gated...), or "".
    """

    repo_id: str
    size_bytes: int | None
    files: int
    downloads: int | None
    gated: bool
    note: str = ""


def search_hub(query: str, *, limit: int = 10, token: str | None = None) -> list[HubModel]:
    """Models on the hub whose id matches `query`, with their download sizes.

    Raises:
        DownloadError: the hub cannot be reached (the message says what to check).
    """
    from huggingface_hub import HfApi  # noqa: PLC0415

    from mixdesk.engine.hub import endpoint  # noqa: PLC0415

    query = query.strip()
    if not query:
        return []
    url = endpoint()
    with hub_errors(query, None, url, token_given=token is not None):
        found = list(HfApi(endpoint=url).list_models(search=query, limit=limit, token=token))
    results = []
    for info in found:
        gated = bool(getattr(info, "gated", False))
        downloads = getattr(info, "downloads", None)
        try:
            _commit, files = remote_files(info.id, token=token)
        except DownloadError as e:  # gated without a token, no safetensors: list it anyway
            results.append(HubModel(info.id, None, 0, downloads, gated, str(e)))
            continue
        results.append(HubModel(info.id, sum(f.size for f in files), len(files), downloads,
                                gated))
    return results
