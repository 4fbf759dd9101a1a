"""The line protocol of bench/vs_pytorch.py's two workers (standard library only, so that the
PyTorch worker can import it from its own Python): one JSON request per stdin line, one JSON
reply per stdout line; {"op": "quit"} ends the loop."""

import json
import resource
import sys


def memory_mib() -> dict[str, float]:
    """The reply to {"op": "rss"}: this process's peak and current resident memory, in MiB."""
    rss = float("nan")
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024.0
                break
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"peak_rss_mib": peak, "rss_mib": rss}


def serve(make_worker) -> None:
    """Builds the worker (its prints go to stderr, keeping stdout for replies), says ready, then
    answers `worker.handle(request)` per line; an exception is replied as {"error": ...}."""
    out = sys.stdout
    sys.stdout = sys.stderr
    worker = make_worker()
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "quit":
            break
        try:
            reply = worker.handle(msg)
        except Exception as e:  # report, keep serving
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
