"""The `mixdesk` command line.

Exit codes: 0 success, 2 a user error (one line on stderr, no traceback),
1 a bug. Each command imports only what it needs: `generate` never loads Qt,
`gui` never loads the web server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from mixdesk.engine.errors import MixdeskError, NoGPUError

log = logging.getLogger("mixdesk.cli")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model folder, or 'demo'")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:n]")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--context", type=_positive_int, default=None,
                   help="context length in tokens (default: min(model maximum, 4096))")


def _add_sampling_flags(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=temperature, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=40, help="0 turns it off")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 turns it off")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="a stop string; repeatable")
    p.add_argument("--system", default=None, help="a system prompt (chat only)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mixdesk", description="Chat with Mixtral on your own GPU.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log engine details")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="build the demo model (smol-moe) and print its path")
    demo.add_argument("--rebuild", action="store_true", help="build again even if present")

    gen = sub.add_parser("generate", help="answer one prompt")
    _add_model_flags(gen)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--chat", action="store_true", help="apply the model's chat template")
    gen.add_argument("--json", action="store_true", help="print one JSON object at the end")
    _add_sampling_flags(gen, temperature=0.7)

    chat = sub.add_parser("chat", help="interactive chat in the terminal")
    _add_model_flags(chat)
    _add_sampling_flags(chat, temperature=0.7)

    quant = sub.add_parser("quantize", help="quantize a model folder into the mixdesk format")
    quant.add_argument("source", help="an unquantized model folder (hub layout), or 'demo'")
    quant.add_argument("dest", help="the output folder; run again with the same one to resume")
    quant.add_argument("--recipe", default=None,
                       help="hqq-card (default without --budget), 2bit-g16, 3bit-g64 or 4bit-g64")
    quant.add_argument("--budget", type=float, default=None,
                       help="VRAM to fit, GB: the planner picks the most faithful recipe that "
                            "fits (with --recipe: checks that one fits)")
    quant.add_argument("--context", type=_positive_int, default=4096,
                       help="context the budget must hold, tokens (default 4096)")
    quant.add_argument("--axis", type=int, choices=[0, 1], default=None,
                       help="grouping axis (default: the recipe's, 0 for hqq-card)")
    quant.add_argument("--device", default="auto", help="where hqq's solver runs")

    plan = sub.add_parser("plan", help="what fits a VRAM budget: recipe, placement, bytes, tok/s")
    plan.add_argument("model", help="a model folder (quantized or not), or 'demo'")
    plan.add_argument("--budget", type=float, default=None,
                      help="VRAM to use, GB (default: the whole GPU)")
    plan.add_argument("--context", type=_positive_int, default=4096, help="tokens (default 4096)")
    plan.add_argument("--recipe", default=None, help="force a recipe (default: the best that fits)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")

    sub.add_parser("bench", add_help=False,
                   help="GPU benchmarks: kernels, decode, TTFT, hqq's path; `bench offload`: "
                        "experts on host (`mixdesk bench --help` lists the arguments)")

    imp = sub.add_parser("import-hqq", help="import a published hqq 0.1.x checkpoint (qmodel.pt)")
    imp.add_argument("source", help="a folder with qmodel.pt and config.json")
    imp.add_argument("dest", help="a new or empty output folder")
    imp.add_argument("--tokenizer-from", default=None,
                     help="a folder with the tokenizer files, if the checkpoint lacks them")

    dl = sub.add_parser("download", help="download a model from the Hugging Face hub")
    dl.add_argument("repo_id", help="a hub id, e.g. mistralai/Mixtral-8x7B-Instruct-v0.1")
    dl.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    dl.add_argument("--dest", default=None,
                    help="the model folder to create (default: $MIXDESK_HOME/models/<name>)")
    dl.add_argument("--token", default=None,
                    help="a hub token for gated repos (default: HF_TOKEN or the stored one)")
    dl.add_argument("--save-token", action="store_true",
                    help="store --token in huggingface_hub's token store for next time")

    gui = sub.add_parser("gui", help="open the desktop app")
    gui.add_argument("--selftest", action="store_true",
                     help="start offscreen, answer one prompt, exit 0 if all works")
    gui.add_argument("--model", default=None, help="load this model folder (or 'demo') at start")
    gui.add_argument("--screenshot", default=None, help="save a PNG of the window (selftest)")
    gui.add_argument("--timeout", type=float, default=None, help="selftest time limit, seconds")

    serve = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    _add_model_flags(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; anything but loopback needs an API key")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--api-key", default=os.environ.get("MIXDESK_API_KEY"),
                       help="clients must send it as a Bearer token (or set MIXDESK_API_KEY)")
    serve.add_argument("--max-queue", type=int, default=8,
                       help="requests that may wait while one runs; more get 429")
    return parser


def _params(args: argparse.Namespace) -> Any:
    from mixdesk.engine.events import SamplingParams  # noqa: PLC0415

    return SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
        seed=args.seed, stop=tuple(args.stop))


def _progress_line(stage: str, fraction: float) -> None:
    print(f"\r{stage} {fraction:4.0%}", end="", file=sys.stderr, flush=True)


def _load(args: argparse.Namespace) -> Any:
    from mixdesk.engine.generate import validate_params  # noqa: PLC0415
    from mixdesk.engine.loader import open_model  # noqa: PLC0415

    validate_params(_params(args))  # reject bad flags before the slow load
    return open_model(args.model, device=args.device, dtype=args.dtype, context=args.context,
                      progress=_progress_line)


def _print_folder(job: Callable[[], Path]) -> int:
    """Run a job that makes a folder; print the folder, or how to resume after Ctrl+C."""
    try:
        path = job()
    except KeyboardInterrupt:
        print("\nmixdesk: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(file=sys.stderr)  # end the progress line
    print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mixdesk.engine.demo import build_demo, ensure_demo  # noqa: PLC0415
    from mixdesk.engine.paths import demo_model_dir  # noqa: PLC0415

    if args.rebuild:
        return _print_folder(lambda: build_demo(demo_model_dir(), progress=_progress_line))
    return _print_folder(lambda: ensure_demo(progress=_progress_line))


def cmd_generate(args: argparse.Namespace) -> int:
    from mixdesk.engine.events import Done, Failed, Token  # noqa: PLC0415
    from mixdesk.engine.generate import generate  # noqa: PLC0415

    lm = _load(args)
    prompt: Any = args.prompt
    if args.system:
        prompt = [{"role": "system", "content": args.system}, {"role": "user", "content": prompt}]
    for event in generate(lm, prompt, _params(args), chat=args.chat or bool(args.system)):
        if isinstance(event, Failed):
            raise _EventError(event.message)
        if isinstance(event, Token) and not args.json:
            print(event.text, end="", flush=True)
        if isinstance(event, Done):
            if args.json:
                print(json.dumps({
                    "token_ids": list(event.token_ids), "text": event.text,
                    "finish_reason": event.reason,
                    "prompt_tokens": event.stats.prompt_tokens,
                    "ttft_s": event.stats.ttft_s, "prefill_tps": event.stats.prefill_tps,
                    "decode_tps": event.stats.decode_tps}))
            else:
                print()
    return 0


def cmd_chat(args: argparse.Namespace, read: Callable[[str], str] = input) -> int:
    from mixdesk.engine.events import Done, Failed, Token  # noqa: PLC0415
    from mixdesk.engine.generate import generate  # noqa: PLC0415

    lm = _load(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages: list[dict[str, str]] = list(system)
    print(f"mixdesk chat with {lm.path.name} on {lm.device}. /reset clears, /exit or Ctrl+D "
          "quits, Ctrl+C stops an answer.", file=sys.stderr)
    while True:
        try:
            line = read("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            messages = list(system)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        cancel = threading.Event()
        answer = ""
        try:
            for event in generate(lm, messages, _params(args), chat=True, cancel=cancel):
                if isinstance(event, Token):
                    print(event.text, end="", flush=True)
                elif isinstance(event, Done):
                    answer = event.text
                    s = event.stats
                    print(f"\n[{s.decode_tps:.1f} tok/s · TTFT {s.ttft_s:.2f} s · "
                          f"ctx {s.context_used}/{s.context_max}]", file=sys.stderr)
                elif isinstance(event, Failed):
                    print(f"\nmixdesk: {event.message}", file=sys.stderr)
                    messages.pop()
        except KeyboardInterrupt:
            cancel.set()
            print("\n[stopped]", file=sys.stderr)
        if answer:
            messages.append({"role": "assistant", "content": answer})


class _EventError(MixdeskError):
    """A Failed event surfaced as an exception for the exit-code path."""


def _quantize_progress(event: Any) -> None:
    eta = f", {event.eta_s:.0f} s left" if event.eta_s is not None else ""
    done = event.bytes_done / event.bytes_total if event.bytes_total else 0.0
    print(f"\r{event.phase}: {event.tensors_done}/{event.tensors_total} tensors, "
          f"{done:4.0%}{eta}   ", end="", file=sys.stderr, flush=True)


def cmd_quantize(args: argparse.Namespace) -> int:
    from mixdesk.engine.loader import prepare_model_path  # noqa: PLC0415
    from mixdesk.engine.qformat import quantize_model  # noqa: PLC0415
    from mixdesk.engine.quantize import get_recipe  # noqa: PLC0415

    source = prepare_model_path(args.source, _progress_line)
    name = args.recipe or "hqq-card"
    get_recipe(name)  # an unknown --recipe fails before any planning
    if args.budget is not None:
        from mixdesk.engine.budget import GB, detect_gpu  # noqa: PLC0415
        from mixdesk.engine.fit import choose_plan  # noqa: PLC0415

        fitted = choose_plan(source, detect_gpu(), args.budget, args.context,
                             recipe=args.recipe)
        name = fitted.recipe.name
        note = f"; {fitted.runnable}" if fitted.runnable else ""
        print(f"mixdesk: recipe {name} for a {args.budget:g} GB budget ({fitted.placement}, "
              f"{fitted.vram_total / GB:.1f} GB at context {fitted.context}, up to "
              f"{fitted.tok_s:.0f} tok/s on {fitted.gpu.name}){note}", file=sys.stderr)
    recipe = get_recipe(name, axis=args.axis)
    device = None if args.device == "auto" else args.device
    return _print_folder(lambda: quantize_model(source, Path(args.dest), recipe,
                                                progress=_quantize_progress, device=device))


def cmd_plan(args: argparse.Namespace) -> int:
    from mixdesk.engine.budget import describe_plan, detect_gpu, plan  # noqa: PLC0415
    from mixdesk.engine.loader import resolve_model_path  # noqa: PLC0415
    from mixdesk.engine.quantize import get_recipe  # noqa: PLC0415

    gpu = detect_gpu()
    if gpu is None and args.budget is None:
        raise NoGPUError("no CUDA GPU here; give --budget GB to plan for one")
    recipe = get_recipe(args.recipe) if args.recipe else None
    # what loading would run (meta offload is priced but not built: engine.budget)
    fitted = plan(resolve_model_path(args.model), gpu, args.budget, args.context, recipe=recipe,
                  runnable_only=True)
    print(json.dumps(fitted.to_dict(), indent=1) if args.json else describe_plan(fitted))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """`mixdesk bench ARGS`: engine.bench's own command line (`offload ...`: engine.offload's)."""
    import torch  # noqa: PLC0415

    rest = list(args.rest)
    if rest[:1] == ["offload"]:
        from mixdesk.engine.offload import main as run  # noqa: PLC0415

        rest = rest[1:]
    else:
        from mixdesk.engine.bench import main as run  # noqa: PLC0415
    if not torch.cuda.is_available() and not {"-h", "--help"} & set(rest):
        raise NoGPUError("mixdesk bench times the CUDA kernels and engine, and no CUDA GPU is "
                         "here; `mixdesk plan --budget GB` predicts speeds without one")
    return run(rest)


def _download_progress(event: Any) -> None:
    from mixdesk.engine.hub import human_bytes  # noqa: PLC0415

    eta = f", {event.eta_s:.0f} s left" if event.eta_s is not None else ""
    done = event.done / event.total if event.total else 0.0
    print(f"\r{human_bytes(event.done)} of {human_bytes(event.total)} ({done:4.0%}), "
          f"{human_bytes(event.speed)}/s{eta}, file {event.files_done + 1}/{event.files_total}   ",
          end="", file=sys.stderr, flush=True)


def cmd_download(args: argparse.Namespace) -> int:
    from mixdesk.engine.hub import download, save_token  # noqa: PLC0415

    if args.save_token and args.token:
        save_token(args.token)
    dest = Path(args.dest) if args.dest else None
    return _print_folder(lambda: download(args.repo_id, revision=args.revision, dest=dest,
                                          token=args.token, progress=_download_progress))


def cmd_import_hqq(args: argparse.Namespace) -> int:
    from mixdesk.engine.hqq_import import import_hqq  # noqa: PLC0415

    tokenizer_from = Path(args.tokenizer_from) if args.tokenizer_from else None
    return _print_folder(lambda: import_hqq(Path(args.source), Path(args.dest),
                                            tokenizer_from=tokenizer_from,
                                            progress=_quantize_progress))


def cmd_gui(args: argparse.Namespace) -> int:
    from mixdesk.app.gui import main as gui_main  # noqa: PLC0415 - only `gui` loads Qt
    from mixdesk.engine.loader import resolve_model_path  # noqa: PLC0415

    argv = []
    if args.model:
        argv += ["--model", str(resolve_model_path(args.model))]
    if args.screenshot:
        argv += ["--screenshot", args.screenshot]
    if args.timeout is not None:
        argv += ["--timeout", str(args.timeout)]
    return gui_main(argv, selftest=args.selftest)


def cmd_serve(args: argparse.Namespace) -> int:
    from mixdesk.app.server import run_server  # noqa: PLC0415 - only `serve` loads the ASGI stack

    return run_server(args.model, host=args.host, port=args.port, api_key=args.api_key,
                      device=args.device, dtype=args.dtype, context=args.context,
                      max_queue=args.max_queue)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": cmd_demo,
    "generate": cmd_generate,
    "chat": cmd_chat,
    "serve": cmd_serve,
    "quantize": cmd_quantize,
    "download": cmd_download,
    "plan": cmd_plan,
    "bench": cmd_bench,
    "import-hqq": cmd_import_hqq,
    "gui": cmd_gui,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command == "bench":  # the bench modules parse their own arguments
        cut = argv.index("bench") + 1
        args = build_parser().parse_args(argv[:cut])
        args.rest = argv[cut:]
    else:
        args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except MixdeskError as error:
        print(f"mixdesk: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
