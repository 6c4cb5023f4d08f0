"""Trusted harness that runs INSIDE the sandbox (passed as `python -I -S -c <this source>`).

It reads one job (JSON) from stdin, then reports on a private file descriptor (`chan_fd`),
one frame a line: `<nonce> <json>`. Kinds of job:

- `main`: exec setup_code, evaluate every test's call arguments (before any model code runs),
  exec the model's program as `__main__`, then call `Solution().<method>(*args, **kwargs)` for
  each input and report the return value converted to plain JSON data. The expected outputs are
  never in this process; the grader compares outside. Whatever the program does to this process
  (patching json, builtins, exiting early) can only change which values get reported, never
  what they are compared against.
- `expected`: exec setup_code only and evaluate the expected-value expressions (no model code).
- `run_tests`: exec setup + program, then call the program's evaluator (`job["evaluator"]`, the name
  the prompt announced, default `run_tests`) with the model's Solution, with a stub Solution (method
  returns 0) and with the canonical Solution.

`to_plain` is also imported by the grader for literal expected values.
"""

from __future__ import annotations

import builtins
import json
import os
import sys

MAX_NODES = 1_000_000  # cap on converted elements per value (cycles, huge structures)

_type, _len, _getattr, _id, _isinstance = type, len, getattr, id, isinstance
_dumps, _write = json.dumps, os.write


class _Invalid(Exception):
    """A returned value that is not plain data."""


def to_plain(value: object) -> object:
    """Convert a returned value to plain JSON data with exact type checks (no subclasses).

    ListNode/TreeNode chains become {"__list__": [...]} / {"__tree__": [...]}; sets and dicts
    become tagged lists; anything else becomes {"__invalid__": type name}, which never matches."""
    budget = [MAX_NODES]
    try:
        return _conv(value, budget)
    except (_Invalid, RecursionError, ValueError, TypeError, AttributeError):
        try:
            name = str(_type(value).__name__)[:64]
        except Exception:  # noqa: BLE001 - a hostile metaclass; the value is invalid anyway
            name = "?"
        return {"__invalid__": name}


def _tick(budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise _Invalid("too large")


def _conv(x, budget: list[int]) -> object:  # x: any value (left unannotated: no typing import here)
    _tick(budget)
    t = _type(x)
    if x is None or t is bool or t is int or t is float or t is str:
        return x
    if t is list or t is tuple:
        return [_conv(e, budget) for e in x]
    if t is set or t is frozenset:
        return {"__set__": [_conv(e, budget) for e in x]}
    if t is dict:
        return {"__dict__": [[_conv(k, budget), _conv(v, budget)] for k, v in dict.items(x)]}
    name = t.__name__ if _type(t.__name__) is str else ""
    if name == "ListNode":
        vals, seen, node = [], set(), x
        while node is not None:
            if _id(node) in seen:
                raise _Invalid("cycle")
            seen.add(_id(node))
            vals.append(_conv(_getattr(node, "val"), budget))
            node = _getattr(node, "next")
        return {"__list__": vals}
    if name == "TreeNode":
        vals, queue, head = [], [x], 0
        while head < _len(queue):
            node = queue[head]
            head += 1
            _tick(budget)
            if node is None:
                vals.append(None)
                continue
            vals.append(_conv(_getattr(node, "val"), budget))
            queue.append(_getattr(node, "left"))
            queue.append(_getattr(node, "right"))
        while vals and vals[-1] is None:
            vals.pop()
        return {"__tree__": vals}
    raise _Invalid(name)


def _main() -> None:
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    sys.stdin = open(os.devnull)  # noqa: SIM115 - the program must not re-read the job
    chan, nonce = int(job["chan_fd"]), str(job["nonce"])

    def emit(obj: dict) -> None:
        try:
            _write(chan, (nonce + " " + _dumps(obj) + "\n").encode("utf-8"))
        except (ValueError, TypeError, OverflowError, RecursionError):
            emit({"k": obj.get("k", "?"), "i": obj.get("i"), "v": {"__invalid__": "unserialisable"}})
        except OSError:
            pass  # the program closed the channel; missing frames count as failures

    ns: dict = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(job.get("setup", ""), "setup.py", "exec"), ns)  # noqa: S102 - trusted
    except Exception as err:  # noqa: BLE001 - reported, the grader decides
        emit({"k": "fatal", "where": "setup", "err": repr(err)[:300]})
        return
    kind = job["kind"]
    if kind == "expected":
        for i, src in enumerate(job["exprs"]):
            try:
                emit({"k": "out", "i": i, "v": to_plain(eval(src, ns))})  # noqa: S307 - trusted
            except Exception as err:  # noqa: BLE001 - reported per expression, the grader decides
                emit({"k": "err", "i": i, "e": repr(err)[:200]})
        emit({"k": "done"})
        return
    calls = []
    if kind == "main":
        ns["__pgrpo_args__"] = lambda *a, **k: (a, k)
        for src in job["inputs"]:
            calls.append(eval("__pgrpo_args__(" + src + ")", ns))  # noqa: S307 - trusted
        del ns["__pgrpo_args__"]
    setup_ns = dict(ns)
    evaluator = str(job.get("evaluator", "run_tests"))  # the name the prompt gave the evaluator
    emit({"k": "start"})
    try:
        exec(compile(job["program"], "solution.py", "exec"), ns)  # noqa: S102 - model code
        emit({"k": "load", "ok": True, "evaluator": callable(ns.get(evaluator))})
    except BaseException as err:  # noqa: BLE001 - SystemExit etc. from model code
        emit({"k": "load", "ok": False, "err": _safe_name(err)})
        if kind == "main":
            return
    if kind == "main":
        _oracle_calls(ns, job["method"], calls, emit)
    else:
        _run_tests_variants(ns, setup_ns, job, evaluator, emit)
    emit({"k": "done"})


def _safe_name(err: BaseException) -> str:
    try:
        return str(_type(err).__name__)[:64]
    except Exception:  # noqa: BLE001 - a hostile exception type's name may raise anything
        return "?"


def _oracle_calls(ns: dict, method: str, calls: list, emit) -> None:
    for i, (args, kwargs) in enumerate(calls):
        try:
            out = _getattr(ns["Solution"](), method)(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - SystemExit, KeyboardInterrupt from model
            emit({"k": "err", "i": i, "e": _safe_name(err)})
            continue
        emit({"k": "out", "i": i, "v": to_plain(out)})


def _run_tests_variants(ns: dict, setup_ns: dict, job: dict, evaluator: str, emit) -> None:
    stub = _type("Solution", (), {job["method"]: lambda self, *a, **k: 0})
    canon_ns = dict(setup_ns)
    for variant in ("model", "stub", "canonical"):
        try:
            if variant == "stub":
                ns["Solution"] = stub
            elif variant == "canonical":
                exec(compile(job["canonical"], "canonical.py", "exec"), canon_ns)  # noqa: S102 - trusted (the dataset's)
                ns["Solution"] = canon_ns["Solution"]
            ns[evaluator]()
            ok = True
        except BaseException:  # noqa: BLE001 - any raise (or exit) counts as failing
            ok = False
        emit({"k": "rt", "variant": variant, "ok": ok})


if __name__ == "__main__":
    _main()
