"""Summarize a py-spy profile in collapsed-stack form (`py-spy record --format raw`).

Run: python bench/profile_top.py PROFILE.txt [--top 25] [--match TEXT ...]

Prints the functions with the most samples at the top of the stack ("self"), and the functions
and files with the most samples anywhere on the stack ("total"), each as a share of all samples.
--match prints the total share of the samples whose stack contains each TEXT.
"""

import argparse
import collections
import re
from pathlib import Path

# A frame of py-spy's raw output: "function (file:line)"; native frames may lack the location.
_LOCATION = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def parse_collapsed(path: Path) -> list[tuple[list[str], int]]:
    """Return (frames from the outermost, sample count) for every line of a collapsed-stack file."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))

    return stacks


def frame_key(frame: str) -> str:
    """Return "function (file)" for a frame, without the line number, so one function is one key."""
    match = _LOCATION.match(frame)
    if match is None:
        return frame

    file_name = match["file"].rsplit("/", 1)[-1]

    return f"{match['function']} ({file_name})"


def frame_file(frame: str) -> str:
    match = _LOCATION.match(frame)
    if match is None:
        return "(native)"

    path = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]

    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path, help="collapsed stacks from py-spy record --format raw")
    parser.add_argument("--top", type=int, default=25, help="rows per table")
    parser.add_argument("--match", nargs="*", default=[], help="report the share of stacks that contain each text")
    args = parser.parse_args()

    stacks = parse_collapsed(args.profile)
    total = sum(count for _, count in stacks)
    self_samples: collections.Counter[str] = collections.Counter()
    total_samples: collections.Counter[str] = collections.Counter()
    file_samples: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        self_samples[frame_key(frames[-1])] += count
        for key in {frame_key(frame) for frame in frames}:
            total_samples[key] += count
        for file_name in {frame_file(frame) for frame in frames}:
            file_samples[file_name] += count

    print(f"{total} samples in {args.profile}")
    for title, counter in (("self", self_samples), ("total", total_samples), ("total by file", file_samples)):
        print(f"\n{title}:")
        for key, count in counter.most_common(args.top):
            print(f"{count / total:>7.1%}  {key}")

    if args.match:
        print("\nstacks containing:")
        for text in args.match:
            count = sum(count for frames, count in stacks if any(text in frame for frame in frames))
            print(f"{count / total:>7.1%}  {text}")


if __name__ == "__main__":
    main()
