"""The gRPC client side of the xDS tests, run as its own process.

grpcio reads its xDS bootstrap (GRPC_XDS_BOOTSTRAP) when it creates an xDS
client, and keeps xDS clients per process; a test that needs its own registry,
bootstrap or token therefore gets its own process (conftest.XdsClient starts one
per test, with the environment it needs). This process makes channels to
`xds:///NAME` targets and calls the backends' bytes-in, bytes-out method
`/echo.Echo/Who`, whose answer is the backend's name.

Commands arrive one JSON object per line on stdin; each gets one JSON line on
stdout. Every loop here is bounded by a deadline given in the command.

  {"op": "calls", "target": T, "n": N, "timeout": S, "wait_for_ready": B}
      N calls one after another; answers {"hits": {name: count},
      "errors": {"CODE: details": count}, "elapsed": seconds}.
  {"op": "until", "target": T, "name": X, "present": B, "window": W, "deadline": S}
      Calls until the last W calls include X (present) or exclude it (absent),
      or S seconds pass (absent: the last W calls all reached other backends);
      answers {"met": bool, "at": monotonic time of the first
      call of the deciding window, "calls": total, "hits": ..., "errors": ...}.
      time.monotonic() is CLOCK_MONOTONIC, shared with the test process.
  {"op": "run", "target": T, "stop": PATH, "deadline": S, "timeout": S2}
      Calls one after another until the file PATH exists or S seconds pass
      (so the test can act meanwhile); answers {"hits", "errors", "calls",
      "stopped": whether PATH ended it, "start", "end", "first_error",
      "last_error": monotonic times (the last two null without errors)}.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time

import grpc

METHOD = "/echo.Echo/Who"
channels: dict[str, grpc.Channel] = {}


def stub(target: str):
    if target not in channels:
        channels[target] = grpc.insecure_channel(target)
    return channels[target].unary_unary(METHOD)


def call(target: str, timeout: float, wait_for_ready: bool = False) -> tuple[str | None, str | None]:
    """(backend name, None) or (None, "CODE: details")."""
    try:
        return stub(target)(b"", timeout=timeout, wait_for_ready=wait_for_ready).decode(), None
    except grpc.RpcError as e:
        return None, f"{e.code().name}: {e.details()}"


def calls(cmd: dict) -> dict:
    hits: collections.Counter = collections.Counter()
    errors: collections.Counter = collections.Counter()
    start = time.monotonic()
    for _ in range(cmd["n"]):
        name, err = call(cmd["target"], cmd.get("timeout", 5.0), cmd.get("wait_for_ready", False))
        if name is not None:
            hits[name] += 1
        else:
            errors[err] += 1
    return {"hits": hits, "errors": errors, "elapsed": time.monotonic() - start}


def until(cmd: dict) -> dict:
    name, present, window = cmd["name"], cmd["present"], cmd["window"]
    deadline = time.monotonic() + cmd["deadline"]
    recent: collections.deque = collections.deque(maxlen=window)  # (time, backend or None)
    hits: collections.Counter = collections.Counter()
    errors: collections.Counter = collections.Counter()
    total = 0
    while True:
        at = time.monotonic()
        got, err = call(cmd["target"], cmd.get("timeout", 5.0))
        total += 1
        if got is not None:
            hits[got] += 1
        else:
            errors[err] += 1
            time.sleep(0.01)  # a channel that fails at once must not spin
        recent.append((at, got))
        if present and got == name:
            return {"met": True, "at": at, "calls": total, "hits": hits, "errors": errors}
        # Gone means: the last `window` calls all reached other backends (a
        # window of failed calls proves nothing).
        if not present and len(recent) == window and all(b is not None and b != name for _, b in recent):
            return {"met": True, "at": recent[0][0], "calls": total, "hits": hits, "errors": errors}
        if time.monotonic() > deadline:
            return {"met": False, "at": None, "calls": total, "hits": hits, "errors": errors}


def run(cmd: dict) -> dict:
    stop = cmd["stop"]
    hits: collections.Counter = collections.Counter()
    errors: collections.Counter = collections.Counter()
    first_error = last_error = None
    start = time.monotonic()
    deadline = start + cmd["deadline"]
    total = 0
    stopped = False
    while True:
        if os.path.exists(stop):
            stopped = True
            break
        if time.monotonic() > deadline:
            break
        at = time.monotonic()
        got, err = call(cmd["target"], cmd.get("timeout", 5.0))
        total += 1
        if got is not None:
            hits[got] += 1
        else:
            errors[err] += 1
            first_error = first_error or at
            last_error = at
            time.sleep(0.01)  # a channel that fails at once must not spin
    return {"hits": hits, "errors": errors, "calls": total, "stopped": stopped,
            "start": start, "end": time.monotonic(), "first_error": first_error, "last_error": last_error}


def main() -> None:
    ops = {"calls": calls, "until": until, "run": run}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            out = ops[cmd["op"]](cmd)
        except Exception as e:  # reported to the test, which fails with it
            out = {"exception": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
