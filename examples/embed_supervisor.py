"""A supervision tree inside another asyncio application, without the web layer.

Two workers under one supervisor: a calculator that answers asks, and a parser that crashes on a bad
message. The supervisor restarts the parser as a fresh actor (its state is not reused), and the
application carries on. Run it: `python examples/embed_supervisor.py`.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import Any

import structlog

from dalston.actors.runtime import Actor, ActorRef
from dalston.supervisor.spec import worker_spec
from dalston.supervisor.supervisor import SupervisorHandle, start_supervisor
from dalston.supervisor.tree import render_tree, snapshot


@dataclass(frozen=True)
class Square:
    value: int


@dataclass(frozen=True)
class Parse:
    text: str


class Calculator(Actor):
    async def receive(self, message: Any) -> Any:
        match message:
            case Square(value):
                return value * value
        return await super().receive(message)


class Parser(Actor):
    """Appends parsed numbers to a list the application owns; a bad number crashes it (it was a tell)."""

    def __init__(self, parsed: list[int]) -> None:
        self.parsed = parsed

    async def receive(self, message: Any) -> Any:
        match message:
            case Parse(text):
                self.parsed.append(int(text))  # ValueError on bad input: the actor crashes
                return None
        return await super().receive(message)


async def child(sup: SupervisorHandle, child_id: str) -> ActorRef:
    # An ask queues behind any Down the supervisor still has to handle, so this is the current child.
    ref = {info.id: info.ref for info in await sup.which_children()}[child_id]
    if ref is None:
        raise LookupError(f"{child_id} is not running")
    return ref


async def main() -> dict[str, Any]:
    parsed: list[int] = []
    children = [worker_spec("calculator", Calculator), worker_spec("parser", lambda: Parser(parsed))]
    async with await start_supervisor(children, name="app") as sup:  # stops the tree however the block ends
        calculator = await child(sup, "calculator")
        squares = [await calculator.ask(Square(n), timeout=1.0) for n in range(5)]

        parser = await child(sup, "parser")
        await parser.tell(Parse("12"))
        await parser.tell(Parse("twelve"))  # crashes the parser
        await asyncio.wait_for(parser.wait_stopped(), timeout=5.0)
        restarted = await child(sup, "parser")
        await restarted.ask(Parse("34"), timeout=1.0)

        tree = await snapshot(sup.ref)
        print(render_tree(tree))
    print(f"squares={squares} parsed={parsed} parser restarts={restarted.statistics().restarts}")
    return {
        "squares": squares,
        "parsed": parsed,
        "parser_replaced": restarted is not parser,
        "tree": tree.to_json(),
        "stopped": not sup.ref.alive,
    }


if __name__ == "__main__":
    # Logs to stderr, so that stdout holds only the tree and the results.
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(
                colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
            ),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    asyncio.run(main())
