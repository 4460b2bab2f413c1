"""Helpers of the multi-device tests: run a worker script on forced host CPU devices,
and read compiled HLO for collectives inside loops (a sharded solve must not gather
full-length vectors in its iteration)."""

import os
import re
import subprocess
import sys

import pytest


SKIP = 77  # a worker's exit code for "cannot run here"
DEVICES = 4


def run_worker(script, *args):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"  # the forced host devices are CPU devices
    proc = subprocess.run(
        [sys.executable, os.path.abspath(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode == SKIP:
        pytest.skip(proc.stdout.strip() or "the worker cannot run here")
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return proc.stdout


def loop_computations(hlo: str) -> dict:
    """The computations of compiled HLO text that run inside a `while` loop (its bodies,
    conditions, and everything they call, transitively): name -> instruction lines."""
    comps, current = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header and not line.startswith(" "):
            current = header.group(1)
            comps[current] = []
        elif line.startswith("}"):
            current = None
        elif current is not None:
            comps[current].append(line.strip())
    callee = re.compile(
        r"(?:body|condition|calls|to_apply|branch_computations|true_computation|"
        r"false_computation)=\{?([%\w.\-, ]+)\}?"
    )
    todo = [
        name
        for lines in comps.values()
        for line in lines
        if " while(" in line
        for name in re.findall(r"(?:body|condition)=%?([\w.\-]+)", line)
    ]
    seen = {}
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen[name] = comps[name]
        for line in comps[name]:
            for group in callee.findall(line):
                todo.extend(part.strip().lstrip("%") for part in group.split(","))
    return seen


def check_hlo(hlo: str, n: int, label: str) -> None:
    """Inside every loop: no all-gather / all-to-all producing an array with a dimension of
    the full length `n`, and no loop carry holding a full-length vector."""
    shape = re.compile(r"[a-z]\d*\[([\d,]*)\]")

    def has_full(text):
        return any(str(n) in dims.split(",") for dims in shape.findall(text))

    whiles = [line for line in hlo.splitlines() if " while(" in line]
    assert whiles, f"{label}: no while loop in the compiled program"
    for line in whiles:
        carry = line.split(" while(")[0]
        assert not has_full(carry), f"{label}: a loop carries a full vector: {line[:400]}"
    loops = loop_computations(hlo)
    assert loops, label
    for name, lines in loops.items():
        for line in lines:
            op = re.search(r"=\s*\S+\s+(all-gather|all-to-all)\(", line) or re.search(
                r"\b(all-gather|all-to-all)(-start)?\(", line
            )
            if op:
                result = line.split("=", 1)[1].split(op.group(1))[0]
                assert not has_full(result), f"{label}: full gather in loop {name}: {line[:300]}"


def loop_collectives(hlo: str) -> list[tuple[str, tuple[int, ...]]]:
    """(collective, output shape) of every collective inside a while loop (bodies,
    conditions and what they call)."""
    pattern = re.compile(
        r"= \w+\[([\d,]*)\][^ ]* (all-gather|all-reduce|all-to-all|collective-permute|"
        r"reduce-scatter)(?:-start)?\("
    )
    out = []
    for lines in loop_computations(hlo).values():
        for line in lines:
            m = pattern.search(line)
            if m:
                out.append((m.group(2), tuple(int(d) for d in m.group(1).split(",") if d)))
    return out
