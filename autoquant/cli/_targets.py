"""Target commands: ``targets`` (list, check) and ``device serve`` (on the board)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from autoquant.cli import Command
from autoquant._limits import MAX_CALLS, MAX_PORT, MAX_STATES
from autoquant.cli._options import integer, seconds

__all__ = ["DeviceCommand", "TargetsCommand"]


class TargetsCommand(Command):
    name = "targets"
    help = "list the hardware targets, or check one (reach it and print its device facts)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--check", metavar="TARGET", help="reach this target and print its facts")
        parser.add_argument("--device", metavar="HOST:PORT", help="the board of a remote target")
        parser.add_argument("--secret-file", help="the device's shared secret")
        parser.add_argument("--setup-emulation", action="store_true",
                            help="prepare the emulated Arm targets (qemu-user, an arm64 Python with "
                                 "onnxruntime and, where installed here, LiteRT; the instruction-count plugin); "
                                 "cached, about a minute")
        parser.add_argument("--cpus", default="cortex-a72,cortex-a76",
                            help="CPUs to prepare for emulation (default cortex-a72,cortex-a76)")

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        from autoquant.targets import available_targets, get_target, load_target_spec

        if args.setup_emulation:
            from autoquant.targets import setup_emulation

            cpus = [c.strip() for c in args.cpus.split(",") if c.strip()]
            folder = setup_emulation(cpus, log=lambda s: print(s, file=sys.stderr))
            return {"emulation": str(folder), "cpus": cpus}
        if args.check:
            target = get_target(args.check, device=args.device, secret_file=args.secret_file)
            return {"target": args.check, "facts": target.facts()}
        rows = []
        for name, path in available_targets().items():
            spec = load_target_spec(path)
            rows.append({"name": name, "reach": spec.reach, "description": spec.description,
                         "cost_unit": spec.cost_unit, "accelerated_precisions": list(spec.accelerated_precisions),
                         "runtimes": list(spec.runtimes)})
        return {"targets": rows}

    def render(self, result: dict[str, Any]) -> str:
        if "emulation" in result:
            return f"emulation ready in {result['emulation']} for {', '.join(result['cpus'])}"
        if "facts" in result:
            return "\n".join([f"target {result['target']}: reachable"] +
                             [f"  {k}: {v}" for k, v in result["facts"].items()])
        return "\n".join(f"{r['name']:<18} {r['reach']:<9} {r['cost_unit']:<13} "
                         f"{','.join(r.get('runtimes', [])):<20} {r['description']}" for r in result["targets"])


class DeviceCommand(Command):
    name = "device"
    help = "run on the board: 'autoquant device serve' measures models for a searching workstation"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", choices=("serve",))
        parser.add_argument("--host", default="127.0.0.1",
                            help="address to listen on (default 127.0.0.1; 0.0.0.0 to accept the network)")
        parser.add_argument("--port", type=integer(0, MAX_PORT), default=7878,
                            help=f"port to listen on, 0 to {MAX_PORT} (default 7878; 0: any free port)")
        parser.add_argument("--secret-file", required=True, help="file holding the shared secret")
        parser.add_argument("--max-model-mb", type=integer(1, 4096), default=64,
                            help="request size cap (default 64, at most 4096)")
        parser.add_argument("--max-seconds", type=integer(1, 86_400), default=120,
                            help="run time cap per job (default 120, at most 86400)")
        parser.add_argument("--max-calls", type=integer(1, MAX_CALLS), default=20_000,
                            help=f"timed calls cap (default 20000, at most {MAX_CALLS:,})")
        parser.add_argument("--max-batch", type=integer(1, MAX_STATES), default=4096,
                            help=f"rows per inference job (default 4096, at most {MAX_STATES:,})")
        parser.add_argument("--max-connections", type=integer(1, 4096), default=16,
                            help="connections whose signature is not checked yet; past it a new one closes the "
                                 "oldest (default 16, at most 4096); signed requests have as many slots of their own")
        parser.add_argument("--max-connections-per-address", type=integer(1, 4096), default=8,
                            help="unsigned connections from one address; past it a new one closes that address's "
                                 "oldest (default 8)")
        parser.add_argument("--header-deadline", type=seconds, default=5.0,
                            help="seconds a connection has to send its request line and signed headers (default 5)")
        parser.add_argument("--queue-wait", type=seconds, default=30.0,
                            help="seconds a job waits for the device before a 503 (default 30)")
        parser.add_argument("--read-timeout", type=seconds, default=15.0,
                            help="seconds a silent client is kept (default 15)")
        parser.add_argument("--request-deadline", type=seconds, default=120.0,
                            help="seconds a whole request may take to arrive (default 120)")
        parser.add_argument("--max-job-mb", type=integer(1, 1 << 20), default=1024,
                            help="memory a job may map beyond onnxruntime's own, in MiB; a job past it gets a 422 "
                                 "(default 1024, at most 1048576; enforced with RLIMIT_AS on Linux)")
        parser.add_argument("--max-answer-mb", type=integer(1, 4096), default=64,
                            help="answer size cap, in MiB; a larger answer gets a 422 (default 64, at most 4096)")

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        from autoquant.targets import DeviceLimits, serve

        limits = DeviceLimits(max_body_bytes=args.max_model_mb << 20, max_seconds=float(args.max_seconds),
                              max_calls=args.max_calls, max_batch=args.max_batch, queue_wait_s=args.queue_wait,
                              max_connections=args.max_connections, read_timeout_s=args.read_timeout,
                              request_deadline_s=args.request_deadline, header_deadline_s=args.header_deadline,
                              max_connections_per_address=args.max_connections_per_address,
                              max_job_bytes=args.max_job_mb << 20, max_answer_bytes=args.max_answer_mb << 20)

        def ready(server: Any) -> None:
            host, port = server.address
            print(f"autoquant device: serving on {host}:{port} ({server.facts['cpu']}, onnxruntime "
                  f"{server.facts['onnxruntime']})", file=sys.__stderr__, flush=True)

        try:
            serve(args.secret_file, host=args.host, port=args.port, limits=limits, ready=ready)
        except KeyboardInterrupt:
            pass
        return {"stopped": True}

    def render(self, result: dict[str, Any]) -> str:
        return "autoquant device: stopped"
