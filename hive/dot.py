"""A map of a plan (issue 23): `nix-hive plan --dot` prints it as a Graphviz graph.

Where each closure goes: the deployer (and the build hosts) build the systems; the relay
stores get them from there (or from the relay they substitute from); each instance gets its
system from its relay, or straight from where it was built. Instances are drawn in a cluster
per wave, in the order the waves run. Many instances alike (same wave, system and source)
become one node that counts them, so a fleet of hundreds stays a picture.

Every identifier and label is quoted and escaped: names come from the deployment file.
"""

from __future__ import annotations

from collections.abc import Sequence

from hive import text as text_
from hive.model import Hive, Instance
from hive.plan import Plan

ALIKE = 6  # more instances alike than this in a wave become one node


def quote(value: str) -> str:
    """A DOT string: one printable line, `\\` and `"` escaped, and `&` (Graphviz reads
    `&lt;` and the like in any label as the character they name). A label's line breaks are
    added by the caller as `\\n`."""
    shown = text_.line(value, 200)
    return '"' + shown.replace("\\", "\\\\").replace('"', '\\"').replace("&", "&amp;") + '"'


def _label(*lines: str) -> str:
    """A multi-line label: each line quoted-escaped, joined by DOT's `\\n`."""
    return '"' + "\\n".join(quote(ln)[1:-1] for ln in lines if ln) + '"'


def _names(items: Sequence[str], limit: int = 60) -> str:
    joined = ", ".join(items)
    return joined if len(joined) <= limit else text_.summary(list(items), "systems", limit)


def render(plan: Plan, hive: Hive | None = None) -> str:
    """The plan as a DOT digraph."""
    out: list[str] = []
    shown = hive.shown if hive is not None else "the deployment"
    waves = len(plan.waves)
    title = (f"nix-hive plan of {shown}: {len(plan.instances)} instance{'s' if len(plan.instances) != 1 else ''}, "
             f"{waves} wave{'s' if waves != 1 else ''}, goal {plan.goal.value}"
             + (", push only" if plan.final.value == "push" else ""))
    out.append("digraph plan {")
    out.append(f'  graph [rankdir=LR, newrank=true, nodesep=0.25, ranksep=0.7, fontname="DejaVu Sans", '
               f'fontsize=13, labelloc=t, label={quote(title)}];')
    out.append('  node [fontname="DejaVu Sans", fontsize=11, shape=box, style="rounded,filled", '
               'fillcolor="#ffffff", color="#546e7a"];')
    out.append('  edge [fontname="DejaVu Sans", fontsize=9, color="#546e7a", fontcolor="#37474f"];')

    # Where each system is built: this machine, or its build host.
    built_at: dict[str, str] = {}
    local = [s for g in plan.groups if g.host is None for s in g.systems]
    out.append(f'  deployer [shape=house, fillcolor="#e3f2fd", '
               f'label={_label("deployer", "this machine", "builds " + _names(local) if local else "")}];')
    for s in local:
        built_at[s] = "deployer"
    for n, host in enumerate(sorted({g.host for g in plan.groups if g.host is not None})):
        systems = [s for g in plan.groups if g.host == host for s in g.systems]
        node = f"build_{n}"
        out.append(f'  {node} [shape=box3d, fillcolor="#ede7f6", '
                   f'label={_label("build host", host, "builds " + _names(systems))}];')
        out.append(f'  deployer -> {node} [label={quote("derivations")}, style=dashed];')
        for s in systems:
            built_at[s] = node

    # Relay stores, each filled from where its systems were built, or from its upstream relay.
    relay_node = {r.url: f"relay_{n}" for n, r in enumerate(plan.relays)}
    for r in plan.relays:
        node = relay_node[r.url]
        lines = ["relay store", r.url, "holds " + _names(r.systems)]
        if r.upload:
            lines.append(f"written through {r.upload}")
        out.append(f'  {node} [shape=cylinder, fillcolor="#fff3e0", label={_label(*lines)}];')
        if r.upstream is not None and r.upstream in relay_node:
            out.append(f'  {relay_node[r.upstream]} -> {node} [label={quote("substitutes")}];')
        else:
            for source in sorted({built_at.get(s, "deployer") for s in r.systems}):
                systems = [s for s in r.systems if built_at.get(s, "deployer") == source]
                out.append(f'  {source} -> {node} [label={quote("copy " + _names(systems))}, penwidth=1.6];')

    # The waves: a cluster each, instances alike (system, source) counted in one node.
    owner_node: dict[str, str] = {}
    for w, wave in enumerate(plan.waves, 1):
        out.append(f"  subgraph cluster_wave_{w} {{")
        out.append(f'    label={quote(f"wave {w}: {len(wave)} instance" + ("s" if len(wave) != 1 else ""))}; '
                   'style="rounded,filled"; fillcolor="#f5f7fa"; color="#b0bec5";')
        edges: list[str] = []
        for k, (system, source, members) in enumerate(_alike(plan, wave, built_at)):
            node = f"w{w}_{k}"
            if len(members) > ALIKE:
                names = ", ".join([*(i.name for i in members[:3]), "…", members[-1].name])
                label = _label(names, f"{len(members)} instances of {system}")
            else:
                label = _label(*(i.name for i in members), f"system {system}")
            out.append(f"    {node} [label={label}];")
            for i in members:
                owner_node[i.name] = node
            if any(r.owner == i.name and system in r.systems for r in plan.relays for i in members):
                pass  # a relay's own host: its system came in the relay's copy (the dotted line)
            elif source in relay_node:
                edges.append(f'  {relay_node[source]} -> {node} [label={quote("substitute")}];')
            else:
                edges.append(f'  {source} -> {node} [label={quote("push " + system)}];')
        out.append("  }")
        out.extend(edges)
    # A relay that is an instance's own store (ssh://portico): a dotted line to that instance.
    for r in plan.relays:
        if r.owner is not None and r.owner in owner_node:
            out.append(f'  {owner_node[r.owner]} -> {relay_node[r.url]} [style=dotted, arrowhead=none, '
                       f'label={quote("its store")}];')
    out.append("}")
    return "\n".join(out) + "\n"


def _alike(plan: Plan, wave: Sequence[Instance], built_at: dict[str, str]) -> list[tuple[str, str, list[Instance]]]:
    """A wave's nodes: (system, where its instances get it: a relay's URL or the node that
    built it, the instances). Instances alike stay a node each when few, one node when many."""
    by: dict[tuple[str, str], list[Instance]] = {}
    for i in wave:
        chain = plan.relay_chain(i)
        source = chain[0].url if chain else built_at.get(i.system, "deployer")
        by.setdefault((i.system, source), []).append(i)
    out: list[tuple[str, str, list[Instance]]] = []
    for (system, source), members in by.items():
        if len(members) > ALIKE:
            out.append((system, source, members))
        else:
            out += [(system, source, [i]) for i in members]
    return out
