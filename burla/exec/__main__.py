"""`python -m burla.exec`: one executor, or with --zygote the agent's fork server; no CLI load."""

from __future__ import annotations

import argparse

parser = argparse.ArgumentParser(prog="burla exec")
parser.add_argument("--endpoint", help="the agent's executor endpoint")
parser.add_argument("--id", help="executor id the agent gave")
parser.add_argument("--zygote", action="store_true", help="serve forks for the agent")
parser.add_argument("--control-fd", type=int, default=3, help="the zygote's socket to the agent")
parser.add_argument("--cgroup-root", action="append", default=[],
                    help="the agent's cgroup root, removed by the zygote if the agent dies")
args = parser.parse_args()
if args.zygote:
    from burla.exec.zygote import serve

    serve(args.control_fd, args.cgroup_root)
else:
    if not args.endpoint or not args.id:
        parser.error("--endpoint and --id are required without --zygote")
    from burla.exec.runner import main

    main(args.endpoint, args.id)
