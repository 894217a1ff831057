"""Snapshots of a live supervision tree (DESIGN §4): data first (`TreeNode.to_json`), text rendering second.

`snapshot` reads each actor's `statistics()` and asks each supervisor for its children, recursively. A child
that stops while the snapshot is taken shows as stopped, with no children; the snapshot never fails for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dalston.actors.runtime import ActorDead, ActorRef
from dalston.supervisor.spec import ChildKind
from dalston.supervisor.supervisor import ChildInfo, WhichChildren


@dataclass(frozen=True)
class TreeNode:
    id: str  # the child id in its parent (the actor's name for the root)
    name: str  # the actor's name
    kind: ChildKind
    actor: str  # the actor's class
    status: str  # starting | running | stopping | stopped
    restarts: int
    uptime_s: float
    mailbox_depth: int
    mailbox_bound: int
    messages_handled: int
    extra: dict[str, Any] = field(default_factory=dict)
    children: tuple[TreeNode, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "actor": self.actor,
            "status": self.status,
            "restarts": self.restarts,
            "uptime_s": self.uptime_s,
            "mailbox_depth": self.mailbox_depth,
            "mailbox_bound": self.mailbox_bound,
            "messages_handled": self.messages_handled,
            "extra": dict(self.extra),
            "children": [child.to_json() for child in self.children],
        }


def _is_supervisor(ref: ActorRef) -> bool:
    return "strategy" in ref.statistics().extra  # every Supervisor reports its strategy


async def snapshot(
    ref: ActorRef, *, child_id: str | None = None, kind: ChildKind | None = None, timeout_s: float = 2.0
) -> TreeNode:
    """The live tree under `ref`; `timeout_s` bounds each supervisor's answer."""
    stats = ref.statistics()
    kind = kind or ("supervisor" if _is_supervisor(ref) else "worker")
    children: tuple[TreeNode, ...] = ()
    if kind == "supervisor" and ref.alive:
        try:
            infos: list[ChildInfo] = await ref.ask(WhichChildren(), timeout=timeout_s)
        except (ActorDead, TimeoutError):
            infos = []
        children = tuple([await _child_node(info, timeout_s) for info in infos])
    return TreeNode(
        id=child_id or stats.name,
        name=stats.name,
        kind=kind,
        actor=stats.kind,
        status=stats.status,
        restarts=stats.restarts,
        uptime_s=stats.uptime_s,
        mailbox_depth=stats.mailbox_depth,
        mailbox_bound=stats.mailbox_bound,
        messages_handled=stats.messages_handled,
        extra=stats.extra,
        children=children,
    )


async def _child_node(info: ChildInfo, timeout_s: float) -> TreeNode:
    if info.ref is not None:
        return await snapshot(info.ref, child_id=info.id, kind=info.kind, timeout_s=timeout_s)
    # A known child that is not running (a transient child that exited normally).
    return TreeNode(info.id, info.id, info.kind, "", "stopped", 0, 0.0, 0, 0, 0)


def render_tree(node: TreeNode) -> str:
    """Plain text, one actor per line, like `pstree`."""
    return "\n".join(_render(node, prefix="", connector="", child_prefix=""))


def _render(node: TreeNode, prefix: str, connector: str, child_prefix: str) -> list[str]:
    lines = [prefix + connector + _describe(node)]
    for i, child in enumerate(node.children):
        last = i == len(node.children) - 1
        lines += _render(
            child, prefix + child_prefix, "└── " if last else "├── ", "    " if last else "│   "
        )
    return lines


def _describe(node: TreeNode) -> str:
    what = f"{node.kind} {node.actor}".strip()
    text = f"{node.id} [{what}] {node.status}"
    if node.status == "stopped" and not node.actor:
        return text
    return (
        f"{text} restarts={node.restarts} up={node.uptime_s:.1f}s"
        f" mailbox={node.mailbox_depth}/{node.mailbox_bound} handled={node.messages_handled}"
    )
