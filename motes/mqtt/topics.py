"""Topic names, topic filters and the subscription tree.

    tree = SubscriptionTree()
    tree.add("o1/devices/+/telemetry", Subscription("client-a", ...))
    tree.match("o1/devices/d1/telemetry")   # -> ([Subscription], {group: [Subscription]})

Each org has its own topic space: the broker prefixes every topic and filter with the org
(``mount``), so ``#`` from org A never sees org B, and ``$SYS`` stays outside every org.
Filters follow MQTT 4.7: ``+`` matches one level, ``#`` the rest, and neither matches a
first level starting with ``$``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

V = TypeVar("V")

MAX_TOPIC_BYTES = 1024
MAX_LEVELS = 32
SHARE = "$share/"


class TopicError(ValueError):
    """A topic name or filter the specification (or our limits) refuse."""


def check_name(topic: str) -> None:
    """A topic a client may publish to: no wildcards, not empty, within our limits."""
    if not topic:
        raise TopicError("empty topic name")
    if "+" in topic or "#" in topic:
        raise TopicError(f"topic name {topic!r} contains a wildcard")
    _check_size(topic)


def check_filter(topic_filter: str) -> None:
    if not topic_filter:
        raise TopicError("empty topic filter")
    _check_size(topic_filter)
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise TopicError(f"'#' must be the whole last level in {topic_filter!r}")
        if "+" in level and level != "+":
            raise TopicError(f"'+' must be a whole level in {topic_filter!r}")


def _check_size(topic: str) -> None:
    if len(topic.encode()) > MAX_TOPIC_BYTES:
        raise TopicError(f"topic longer than {MAX_TOPIC_BYTES} bytes")
    if topic.count("/") >= MAX_LEVELS:
        raise TopicError(f"topic deeper than {MAX_LEVELS} levels")


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """``$share/group/filter`` -> (group, filter); other filters -> (None, filter)."""
    if not topic_filter.startswith(SHARE):
        return None, topic_filter
    group, sep, rest = topic_filter[len(SHARE) :].partition("/")
    if not sep or not group or not rest or "+" in group or "#" in group:
        raise TopicError(f"shared subscription {topic_filter!r} must be $share/<group>/<filter>")
    return group, rest


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic_filter`` matches ``topic`` (no org prefix involved)."""
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    if topic.startswith("$") and f_levels[0] in ("+", "#"):
        return False
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


@dataclass(slots=True)
class Subscription:
    client: str  # session key
    filter: str  # as the client gave it (without $share and org prefix)
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    identifier: int | None = None
    group: str | None = None

    @classmethod
    def from_options(
        cls, client: str, topic_filter: str, options: int, identifier: int | None
    ) -> Subscription:
        group, plain = split_shared(topic_filter)
        return cls(
            client,
            plain,
            options & 0x03,
            bool(options & 0x04),
            bool(options & 0x08),
            (options >> 4) & 0x03,
            identifier,
            group,
        )


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    subs: dict[str, Subscription] = field(default_factory=dict)
    shared: dict[str, dict[str, Subscription]] = field(default_factory=dict)


class SubscriptionTree:
    """Subscriptions by filter level; ``match`` answers are cached until the next change."""

    def __init__(self, cache_size: int = 100_000) -> None:
        self._root = _Node()
        self._cache: dict[str, tuple[list[Subscription], dict[str, list[Subscription]]]] = {}
        self._cache_size = cache_size
        self.count = 0

    def add(self, internal_filter: str, sub: Subscription) -> bool:
        """Add or replace; True when it is new."""
        node = self._root
        for level in internal_filter.split("/"):
            node = node.children.setdefault(level, _Node())
        table = node.subs if sub.group is None else node.shared.setdefault(sub.group, {})
        new = sub.client not in table
        table[sub.client] = sub
        self.count += new
        self._cache.clear()
        return new

    def remove(self, internal_filter: str, client: str, group: str | None = None) -> bool:
        path = [self._root]
        for level in internal_filter.split("/"):
            nxt = path[-1].children.get(level)
            if nxt is None:
                return False
            path.append(nxt)
        node = path[-1]
        table = node.subs if group is None else node.shared.get(group, {})
        if table.pop(client, None) is None:
            return False
        if group is not None and not table:
            node.shared.pop(group, None)
        self.count -= 1
        self._cache.clear()
        levels = internal_filter.split("/")
        for depth in range(len(levels), 0, -1):  # prune empty branches
            child = path[depth]
            if child.children or child.subs or child.shared:
                break
            del path[depth - 1].children[levels[depth - 1]]
        return True

    def match(self, topic: str) -> tuple[list[Subscription], dict[str, list[Subscription]]]:
        """Plain subscriptions matching ``topic`` (one per client, highest QoS wins) and the
        shared ones by group."""
        hit = self._cache.get(topic)
        if hit is not None:
            return hit
        plain: dict[str, Subscription] = {}
        shared: dict[str, list[Subscription]] = {}
        levels = topic.split("/")
        # the org prefix is level 0: wildcards must not match a $-topic's first own level
        dollar = 1 if not topic.startswith("$") else 0
        self._walk(self._root, levels, 0, dollar, plain, shared)
        result = (list(plain.values()), shared)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[topic] = result
        return result

    def _walk(
        self,
        node: _Node,
        levels: list[str],
        i: int,
        dollar: int,
        plain: dict[str, Subscription],
        shared: dict[str, list[Subscription]],
    ) -> None:
        if i == len(levels):
            self._collect(node, plain, shared)
            hash_node = node.children.get("#")  # "a/#" matches "a" too
            if hash_node is not None:
                self._collect(hash_node, plain, shared)
            return
        level = levels[i]
        wild = not (i == dollar and level.startswith("$"))
        child = node.children.get(level)
        if child is not None:
            self._walk(child, levels, i + 1, dollar, plain, shared)
        if wild:
            plus = node.children.get("+")
            if plus is not None:
                self._walk(plus, levels, i + 1, dollar, plain, shared)
            hash_node = node.children.get("#")
            if hash_node is not None:
                self._collect(hash_node, plain, shared)

    @staticmethod
    def _collect(
        node: _Node, plain: dict[str, Subscription], shared: dict[str, list[Subscription]]
    ) -> None:
        for client, sub in node.subs.items():
            have = plain.get(client)
            if have is None or sub.qos > have.qos:
                plain[client] = sub
        for group, members in node.shared.items():
            # a shared subscription is its group *and* filter: one copy for each (MQTT 4.8.2)
            first = next(iter(members.values()))
            shared.setdefault(f"$share/{group}/{first.filter}", []).extend(members.values())


class _Place(Generic[V]):
    __slots__ = ("children", "topic", "value")

    def __init__(self) -> None:
        self.children: dict[str, _Place[V]] = {}
        self.topic = ""
        self.value: V | None = None


class TopicIndex(Generic[V]):
    """Values by topic name (retained messages), found by topic filter without looking at
    every topic: a SUBSCRIBE to ``devices/d1/#`` walks d1's branch, not the org's 100,000
    retained topics. Wildcards follow :func:`matches`."""

    def __init__(self) -> None:
        self._root: _Place[V] = _Place()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, topic: str) -> bool:
        return self.get(topic) is not None

    def __iter__(self) -> Iterator[str]:
        return (topic for topic, _ in self.items())

    def get(self, topic: str) -> V | None:
        place = self._root
        for level in topic.split("/"):
            child = place.children.get(level)
            if child is None:
                return None
            place = child
        return place.value

    def set(self, topic: str, value: V) -> None:
        place = self._root
        for level in topic.split("/"):
            place = place.children.setdefault(level, _Place())
        self._count += place.value is None
        place.topic, place.value = topic, value

    def pop(self, topic: str) -> V | None:
        levels = topic.split("/")
        path = [self._root]
        for level in levels:
            nxt = path[-1].children.get(level)
            if nxt is None:
                return None
            path.append(nxt)
        value, path[-1].value = path[-1].value, None
        if value is None:
            return None
        self._count -= 1
        for depth in range(len(levels), 0, -1):  # prune what no longer leads anywhere
            if path[depth].children or path[depth].value is not None:
                break
            del path[depth - 1].children[levels[depth - 1]]
        return value

    def items(self) -> Iterator[tuple[str, V]]:
        return self._below(self._root, skip_dollar=False)

    def match(self, topic_filter: str) -> list[tuple[str, V]]:
        """(topic, value) of every topic ``topic_filter`` matches."""
        found: list[tuple[str, V]] = []
        self._walk(self._root, topic_filter.split("/"), 0, found)
        return found

    def _walk(
        self, place: _Place[V], levels: list[str], i: int, found: list[tuple[str, V]]
    ) -> None:
        if i == len(levels):
            if place.value is not None:
                found.append((place.topic, place.value))
            return
        level = levels[i]
        if level == "#":  # the rest, and the parent level itself ("a/#" matches "a")
            if place.value is not None and i:
                found.append((place.topic, place.value))
            found.extend(self._below(place, skip_dollar=i == 0, include_self=False))
        elif level == "+":
            for name, child in place.children.items():
                if not (i == 0 and name.startswith("$")):
                    self._walk(child, levels, i + 1, found)
        else:
            named = place.children.get(level)
            if named is not None:
                self._walk(named, levels, i + 1, found)

    @staticmethod
    def _below(
        place: _Place[V], *, skip_dollar: bool, include_self: bool = True
    ) -> Iterator[tuple[str, V]]:
        stack = [place]
        first = True
        while stack:
            here = stack.pop()
            if here.value is not None and (include_self or not first):
                yield here.topic, here.value
            if first and skip_dollar:
                stack.extend(c for n, c in here.children.items() if not n.startswith("$"))
            else:
                stack.extend(here.children.values())
            first = False
