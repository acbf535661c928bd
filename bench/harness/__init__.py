"""What every benchmark in bench/ shares: processes, gateways and engines, load, numbers, reports and plots.

- `procs`: start a child with its log, wait for a port or a URL, stop it (and only it) by PID.
- `usage`: CPU time of process trees and of the machine, and memory, read from /proc.
- `rest`: blocking JSON calls to 127.0.0.1 and Prometheus text; `keys`: the test keys every gateway starts with.
- `gateway`: `fleetgate up` with a fresh state dir, from this checkout or another (`checkout`: `--base-src`),
  and the admin calls a benchmark makes (tenants, keys).
- `engines`: the fake engine (`fake_engine.py`), the floor proxy (`floor_proxy.py`), sim-engines, llama-server
  and vLLM replicas; `peers`: sglang-router and vllm-router; `litellm_proxy`: LiteLLM.
- `loadgen`: closed-loop cells against targets; `chat`: one streamed chat completion, timed to its first token.
- `worker`: an in-process measurement run in a subprocess (another checkout's code), driven round by round.
- `stats`: percentiles and the arithmetic of comparisons; `report`: the machine, the command, Markdown and Rich
  tables, verdicts, the docs section; `plots` and `figures`: the PNGs next to the docs.
- `runner`: the console, SIGTERM handling, running a coroutine on uvloop, interleaving orders.
- `redis_keys`: the Redis server a limiter uses (its pid, version) and a run's keys.
"""
