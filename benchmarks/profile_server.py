"""Profile `synapse serve`'s hot path with py-spy while the Node generator loads it.

Starts `synapse serve` on core 0, the Node `ws` generator on core 1 (pipelined 8 x --window, 16 by
default, or --sequential 1 x 1; the requests of servers.py's --shape, three-key by default), and samples
the server with `py-spy record` for --seconds. Prints the functions that take the most time (own time
and with callees), as a share of the server's samples; --save writes that summary and the collapsed
stacks (for flamegraph tools) next to each other.

    python benchmarks/profile_server.py [--seconds 8] [--sequential] [--shape seed] [--window 128]
        [--save benchmarks/profiles/after]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from servers import HERE, SHAPES, free_port, pinned, wait_ready


def summarize(collapsed: str, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [frame.split(" (")[0] + " (" + frame.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  for frame in stack.split(";")]  # fmt: skip
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} samples", "", f"{'own %':>6}  function (file)"]
    lines += [f"{100 * n / samples:6.1f}  {name}" for name, n in own.most_common(top)]
    lines += ["", f"{'with callees %':>14}  function (file)"]
    lines += [f"{100 * n / samples:14.1f}  {name}" for name, n in total.most_common(top + 15)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--sequential", action="store_true", help="1 connection x 1 call in flight")
    parser.add_argument("--shape", choices=list(SHAPES), default="three-key", help="the request (servers.py)")
    parser.add_argument("--window", type=int, default=16, help="calls in flight per connection, pipelined")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--reference", action="store_true", help="profile the bare Starlette reference instead")
    parser.add_argument("--native", action="store_true", help="include C frames (orjson, pydantic-core, uvloop)")
    parser.add_argument("--save", type=Path, help="write PREFIX.txt (summary) and PREFIX.collapsed")
    options = parser.parse_args()
    node, py_spy = shutil.which("node"), shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if node is None or not Path(py_spy).exists():
        raise SystemExit("needs Node (and `npm install` in benchmarks/node) and py-spy (pip install py-spy)")
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    synapse = str(Path(sys.executable).parent / "synapse")
    command = [synapse, "serve", "--port", str(port), "--log-level", "warning"]
    if options.reference:
        command = [sys.executable, str(HERE / "reference" / "bare_starlette.py"), str(port)]
    server = subprocess.Popen([*pinned(0), *command], stderr=subprocess.DEVNULL)
    connections, window = (1, 1) if options.sequential else (8, options.window)
    shape = SHAPES[options.shape]
    try:
        wait_ready(url, server)
        script = str(HERE / "node" / "pipelined.js")
        generator = subprocess.Popen(
            [*pinned(1), node, script, url, str(connections), str(window), str(options.seconds + 3)]
            + [shape.body, shape.ids],
            stdout=subprocess.PIPE,
            text=True,
        )
        with tempfile.NamedTemporaryFile("r", suffix=".txt") as raw:
            record = [py_spy, "record", "--pid", str(server.pid), "--duration", str(int(options.seconds))]
            record += ["--rate", "250", "--format", "raw", "--output", raw.name]
            subprocess.run(
                [*record, "--native" if options.native else "--nonblocking"],
                check=True,
                capture_output=True,
            )
            collapsed = Path(raw.name).read_text()
        out, _ = generator.communicate(timeout=60)
    finally:
        server.terminate()
        server.wait(10)
    result = out.strip().splitlines()[-1]
    summary = f"{options.shape} shape, {connections} x {window} load: {result}\n" + summarize(collapsed, options.top)
    print(summary)
    if options.save:
        options.save.parent.mkdir(parents=True, exist_ok=True)
        options.save.with_suffix(".txt").write_text(summary + "\n")
        options.save.with_suffix(".collapsed").write_text(collapsed)


if __name__ == "__main__":
    main()
