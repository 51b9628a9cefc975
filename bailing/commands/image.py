"""`bailing image`: draw (or, with --edit, edit) images with a model that generates them, e.g. Ming.

Flow: argv -> usage checks (output files free unless --force, --edit readable) ->
`Client.generate_image_stream` -> each image written as it arrives (OUT, then OUT-1.ext, OUT-2.ext,
...; each file appears whole) with one line per file on stderr. Progress: a bar updated in place
when stderr is a terminal, nothing otherwise. Exit codes as `bailing chat`: 0 ok, 1 server error,
2 usage or INVALID_ARGUMENT, 3 cannot connect, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from bailing.commands.client import EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, _add_connection_args, _run

FORMATS = ("png", "jpeg", "webp")
SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
BAR_WIDTH = 30


# ---- pure helpers ----------------------------------------------------------------------------
def output_format(fmt: str | None, output: str | None) -> str:
    """--format, else the one -o's suffix names, else png."""
    if fmt:
        return fmt
    return SUFFIX_FORMATS.get(Path(output).suffix.lower(), "png") if output else "png"


def output_path(first: Path, index: int) -> Path:
    """Where image `index` goes: `first` for image 0, then fox-1.png, fox-2.png, ..."""
    return first if index == 0 else first.with_name(f"{first.stem}-{index}{first.suffix}")


def progress_bar(step: int, steps: int, width: int = BAR_WIDTH) -> str:
    """`step 12/30 [############..................]`"""
    done = min(width, width * step // steps) if steps > 0 else 0
    return f"step {step}/{steps} [{'#' * done}{'.' * (width - done)}]"


def write_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that the file appears whole or not at all."""
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---- the command -----------------------------------------------------------------------------
class _Progress:
    """The in-place progress bar on a terminal (silent elsewhere)."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.shown = False

    def show(self, line: str) -> None:
        if self.tty:
            sys.stderr.write(f"\r\x1b[K{line}")
            sys.stderr.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "negative_prompt": args.negative,
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "image_guidance_scale": args.image_guidance,
        "seed": args.seed,
        "num_images": args.num_images,
        "reference_image": args.edit,
        "output_format": args.format,
        "quality": args.quality,
    }


def _cmd_image(client: Any, args: argparse.Namespace) -> int:
    from bailing.client import ImageDone, ImageGenerated, ImageProgress, ImageStarted

    progress, result = _Progress(sys.stderr.isatty()), None
    try:
        with client.generate_image_stream(args.model, args.prompt, **_options(args)) as events:
            for event in events:
                if isinstance(event, ImageStarted):
                    progress.show(f"started on {event.worker_id}")
                elif isinstance(event, ImageProgress):
                    progress.show(progress_bar(event.step, event.steps))
                elif isinstance(event, ImageGenerated):
                    progress.clear()
                    _save(event.image, output_path(args.out, event.image.index), args.force)
                elif isinstance(event, ImageDone):
                    result = event.result
    finally:
        progress.clear()
    if result is None:
        print("error: the stream ended without its done event", file=sys.stderr)
        return EXIT_SERVER_ERROR
    r = result
    print(
        f"[{r.request_id}: {r.usage.images} image(s) {r.size.width}x{r.size.height}, {r.steps} steps, "
        f"seed {r.seed}, {r.timing.total_s:.1f} s]",
        file=sys.stderr,
    )
    return EXIT_OK


def _save(image: Any, path: Path, force: bool) -> None:
    if path.exists() and not force:  # an index beyond --num-images; those were checked up front
        raise FileExistsError(f"{path} exists (use --force to overwrite)")
    write_file(path, image.data)
    print(
        f"wrote {path} ({image.width}x{image.height}, {len(image.data)} bytes, seed {image.seed})",
        file=sys.stderr,
        flush=True,
    )


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _image(args: argparse.Namespace) -> int:
    """`bailing image`: usage checks the parser cannot make (before connecting), then the call."""
    if args.num_images < 1:
        return _usage_error(f"--num-images must be >= 1, got {args.num_images}")
    if args.edit is not None and not os.path.isfile(args.edit):
        return _usage_error(f"no image file at {args.edit} (--edit)")
    args.format = output_format(args.format, args.output)
    args.out = Path(args.output or f"image.{args.format}")
    taken = [p for p in (output_path(args.out, i) for i in range(args.num_images)) if p.exists()]
    if taken and not args.force:
        return _usage_error(f"{', '.join(map(str, taken))} exists (use --force to overwrite)")
    return _run(_cmd_image, args)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "image",
        help="generate (or --edit) images with a model that draws, e.g. ming",
        description="Generate images for PROMPT (or edit --edit PHOTO as PROMPT says) and write them "
        "to -o OUT (several: OUT, OUT-1.ext, OUT-2.ext, ...). Unset options take the model's defaults.",
    )
    p.add_argument("--model", required=True, help="served model name that generates images, e.g. ming")
    p.add_argument(
        "-o", "--output", metavar="OUT", help="file of the first image (default: image.FORMAT in the cwd)"
    )
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--edit", metavar="PHOTO", help="the image to edit (PNG, JPEG, WebP)")
    p.add_argument("--negative", metavar="TEXT", help="negative prompt: what to steer away from")
    p.add_argument("--width", type=int, metavar="W", help="pixels (with --height; snapped by the model)")
    p.add_argument("--height", type=int, metavar="H", help="pixels (with --width)")
    p.add_argument("--steps", type=int, metavar="N", help="denoising steps")
    p.add_argument("--guidance", type=float, metavar="G", help="text guidance scale")
    p.add_argument("--image-guidance", type=float, metavar="G", help="reference-image guidance (--edit)")
    p.add_argument("--seed", type=int, metavar="S", help="same seed + same request = same images")
    p.add_argument("--num-images", type=int, default=1, metavar="K", help="images to draw (default 1)")
    p.add_argument(
        "--format", choices=FORMATS, default=None, help="image format (default: from -o's suffix, else png)"
    )
    p.add_argument("--quality", type=int, metavar="Q", help="jpeg / webp quality, 1..100")
    _add_connection_args(p, None, "request deadline in seconds (default: none)")
    p.add_argument("prompt", metavar="PROMPT", help="what to draw (with --edit: how to change the image)")
    p.set_defaults(func=_image)
