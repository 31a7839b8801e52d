"""From a deployment file to a validated `Hive`: one `nix eval`, the JSON schema, then the
checks a schema cannot express. Every failure is a `DeploymentError` naming the file and the
attribute; nothing is built and nothing is written before this succeeds."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hive import checks, nix, process
from hive import schema as schema_
from hive.errors import DeploymentError, ProcessError, attr_path, nix_error
from hive.model import (
    DEFAULT_ACTIVATION_TIMEOUT,
    DEFAULT_CONFIRM_TIMEOUT,
    DEFAULT_KEY_COMMAND_TIMEOUT,
    DEFAULT_REBOOT_TIMEOUT,
    Check,
    Hive,
    Instance,
    Key,
    System,
    frozen_map,
)
from hive.resources import nix_file, schema_file

if TYPE_CHECKING:
    import jsonschema  # imported where a deployment is found invalid: a valid one never needs it

DEFAULT_CONFIG = "hive.nix"
DEFAULT_ATTR = "nixHive"  # the flake output a flake's deployment is
ATTR = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*(\.[A-Za-z_][A-Za-z0-9_'-]*)*\Z")


@dataclass(frozen=True)
class Located:
    """Where the deployment comes from: a file, or a flake's output (`flake`, `attr`)."""

    file: Path  # the deployment file; a local flake's flake.nix; ./flake.nix for a remote flake
    shown: str  # as messages name it: the file, or flake.nix#attr
    flake: str | None = None  # the flake reference given to Nix (a local one made absolute)
    attr: str = DEFAULT_ATTR


def default_config(directory: Path = Path(".")) -> str:
    """The deployment that no `-c` names, in `directory` (the current one; through doit, the
    dodo file's): its hive.nix, else its flake.nix (the flake's `nixHive` output). Neither
    there: an error that says how to make one."""
    hive, flake = directory / DEFAULT_CONFIG, directory / "flake.nix"
    if not hive.exists() and not flake.is_file():
        raise DeploymentError(str(hive), "no such file here (`nix-hive init` writes a starting one; "
                              "-c FILE|DIR names another)")
    return str(flake if not hive.is_file() and flake.is_file() else hive)


def locate(config: str | None) -> Located:
    """The deployment named by `-c`: a file; a directory holding flake.nix (its `nixHive`
    output), default.nix or hive.nix; or FLAKEREF#ATTR. Without `-c`: `default_config()`."""
    if config is None:
        config = default_config()
    ref, hash_, attr = config.partition("#")
    if hash_:
        if not attr or not ATTR.match(attr):
            raise DeploymentError(config, "expected FLAKEREF#ATTR, ATTR an attribute path such as nixHive or "
                                  "deployments.prod")
        if ":" in ref and not ref.startswith(("path:", "/", ".")):
            return Located(Path.cwd() / "flake.nix", config, ref, attr)  # github:…, git+https://…
        local = Path(ref.removeprefix("path:") or ".")
        if local.name == "flake.nix":
            local = local.parent
        # path:DIR is the directory's files, even in a git work tree (where DIR alone means
        # the files git tracks, as Nix reads flakes)
        return _local_flake(local, attr, str(local / "flake.nix"), scheme="path:" if ref.startswith("path:") else "")
    shown = config
    path = Path(shown)
    if path.is_dir():
        if (path / "flake.nix").is_file() and not (path / DEFAULT_CONFIG).is_file():
            return _local_flake(path, DEFAULT_ATTR, str(path / "flake.nix"))
        found = next((path / n for n in ("default.nix", DEFAULT_CONFIG) if (path / n).is_file()), None)
        if found is None:
            raise DeploymentError(shown, "is a directory without flake.nix, default.nix or hive.nix")
        path = found
        shown = str(Path(shown) / found.name)
    elif not path.is_file():
        raise DeploymentError(shown, "no such file")
    elif path.name == "flake.nix":
        return _local_flake(path.parent, DEFAULT_ATTR, shown)
    return Located(path.resolve(), shown)


def _local_flake(directory: Path, attr: str, shown_file: str, scheme: str = "") -> Located:
    if not (directory / "flake.nix").is_file():
        raise DeploymentError(shown_file, "no such file")
    resolved = directory.resolve()
    return Located(resolved / "flake.nix", f"{shown_file}#{attr}", f"{scheme}{resolved}", attr)


_PATH_ENTRY = re.compile(r"while evaluating the NIX_PATH entry (\[[^\]\n]*\])")


def _path_entry(stderr: str) -> str | None:
    """The NIX_PATH entry whose evaluation failed (`paths.nixpkgs`), from the context
    nix/eval.nix gives each entry, if the error came from one."""
    found = _PATH_ENTRY.search(stderr)
    try:
        return attr_path(json.loads(found.group(1))) if found else None
    except ValueError:
        return None


def nix_message(stderr: str) -> str:
    """Nix's error message and where in the user's files it points, on one line."""
    message, where = nix_error(stderr, skip=str(nix_file("eval.nix").parent) + "/")
    return f"{message or 'nix eval failed'} (at {where})" if where else message or "nix eval failed"


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    """The schema with every local `$ref` replaced by its definition (the schema has no
    recursion). Resolving references dominates validation time: inlining halves it."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


# The values whose validation against a subschema is kept (below): JSON's scalars, and lists
# of them (a list of tags). Their type is part of the key: True == 1 in Python, not in JSON.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _value_key(value: Any) -> Hashable | None:
    """`value` as a key that tells it apart from every other JSON value, when it is a scalar
    or a list of scalars; None otherwise."""
    if type(value) in _SCALARS:
        return type(value), value
    if type(value) is list and all(type(v) in _SCALARS for v in value):
        return list, tuple((type(v), v) for v in value)
    return None


# Keywords whose outcome depends on more than a value and its subschema (where it stands, what
# else was evaluated, a base URI): `_validator`'s shortcuts hold only without them.
_CONTEXTUAL = frozenset({"$id", "$ref", "$dynamicRef", "$recursiveRef", "$anchor", "$dynamicAnchor",
                         "unevaluatedProperties", "unevaluatedItems", "format"})


def _names(node: Any) -> set[str]:
    """Every key of every object in `node` (property names too: on the safe side)."""
    if isinstance(node, dict):
        return set(node).union(*(_names(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_names(v) for v in node))
    return set()


@functools.cache
def _schema() -> Any:
    """The schema, with every local `$ref` inlined (`_inline`)."""
    schema = json.loads(schema_file().read_text())
    return _inline(schema, schema.get("$defs", {}))


@functools.cache
def _accepts() -> Callable[[Any], bool] | None:
    """The schema's compiled test (hive/schema.py), which says only which deployments are
    valid, in about a tenth of jsonschema's time; None for a schema with a `_CONTEXTUAL`
    keyword below its root, whose outcome it could not decide alone."""
    inlined = _schema()
    if _names({k: v for k, v in inlined.items() if k != "$id"}) & _CONTEXTUAL:
        return None
    return schema_.compile_schema(inlined)


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    """The schema's validator (its draft's), made cheaper for 5,000 instances (issue 29):
    jsonschema makes a resolver and a validator for every subschema it enters (about 14 an
    instance), and checks the same store URL, system, tags or ssh option name on every
    instance. This one enters a subschema with the same validator each time, and validates a
    value (`_value_key`) against a subschema once: valid there, it is valid wherever it
    stands. Errors are never kept: every invalid value is reported as jsonschema reports it.
    Sound for a schema without `_CONTEXTUAL` keywords below its root (else: jsonschema's own
    validator). 0.39 s to 0.12 s at 5,000 instances. Used once a deployment is not accepted
    (`_accepts`), to find its errors."""
    import jsonschema

    schema = json.loads(schema_file().read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    inlined = _schema()
    if _names({k: v for k, v in inlined.items() if k != "$id"}) & _CONTEXTUAL:
        return cls(inlined)
    remembering: Any = jsonschema.validators.extend(cls)  # type: ignore[no-untyped-call]
    descend: Callable[..., Iterable[jsonschema.ValidationError]] = remembering.descend
    evolve: Callable[..., Any] = remembering.evolve
    valid: dict[tuple[int, Hashable], Any] = {}  # (a subschema's id, a value's key): the subschema
    made: dict[int, Any] = {}  # a subschema's id: the validator that enters it

    def remembered(self: Any, instance: Any, schema: Any, path: Any = None, schema_path: Any = None,
                   resolver: Any = None) -> Iterable[jsonschema.ValidationError]:
        # the resolver jsonschema would make for `schema` is this one (no $id below the root)
        resolver = self._resolver if resolver is None else resolver
        key = _value_key(instance)
        if key is None:
            return descend(self, instance, schema, path, schema_path, resolver)
        if valid.get((id(schema), key)) is schema:
            return ()
        errors = list(descend(self, instance, schema, path, schema_path, resolver))
        if not errors:
            valid[id(schema), key] = schema  # kept alive: its id stays its own
        return errors

    def reused(self: Any, **changes: Any) -> Any:
        # what descend() asks for: the subschema, with this validator's resolver
        if changes.keys() != {"schema", "_resolver"} or changes["_resolver"] is not self._resolver:
            return evolve(self, **changes)
        found = made.get(id(changes["schema"]))
        if found is None or found.schema is not changes["schema"] or found._resolver is not self._resolver:
            found = made[id(changes["schema"])] = evolve(self, **changes)
        return found

    remembering.descend, remembering.evolve = remembered, reused
    validator: jsonschema.protocols.Validator = remembering(inlined)
    return validator


def _describe(error: jsonschema.ValidationError) -> tuple[list[Any], str]:
    """An attribute path and a one-line message for a schema violation."""
    path = list(error.absolute_path)
    value = error.instance
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    what = schema.get("description")
    shown = json.dumps(value) if not isinstance(value, (dict, list)) else "a list" if isinstance(value, list) else (
        "this attribute set")
    if isinstance(value, dict) and value.get("__nixType"):
        shown = f"a {value['__nixType']}"
    if error.validator == "required":
        missing = re.match(r"'([^']*)'", error.message)
        return path, f"missing attribute {missing.group(1) if missing else ''}".strip()
    if error.validator == "additionalProperties":
        extra = sorted(set(value) - set(schema.get("properties", {}))) if isinstance(value, dict) else []
        known = ", ".join(sorted(schema.get("properties", {})))
        return path + extra[:1], f"unknown attribute (expected one of: {known})"
    if error.validator == "propertyNames":
        name = value if isinstance(value, str) else "?"
        names = error.validator_value if isinstance(error.validator_value, Mapping) else {}
        sub = error.context[0] if error.context else None
        desc = names.get("description") or (
            sub.schema.get("description") if sub is not None and isinstance(sub.schema, Mapping) else None)
        return path, f"{json.dumps(name)} is not {desc or 'a valid name'}"
    if error.validator == "type":
        expected = error.validator_value
        names = {"object": "an attribute set", "array": "a list", "string": "a string",
                 "integer": "an integer", "boolean": "a boolean", "null": "null"}
        if isinstance(expected, list):
            want = " or ".join(names.get(str(t), str(t)) for t in expected)
        else:
            want = names.get(str(expected), str(expected))
        return path, f"{shown} is not {want}"
    if error.validator == "enum" and what:
        kinds = {"int": "an integer", "float": "a number", "bool": "a boolean", "null": "null",
                 "list": "a list", "string": "a string"}
        return path, f"{kinds.get(str(value), shown)} is not {what}"
    if error.validator == "uniqueItems":
        return path, "a tag is repeated"
    if what:
        return path, f"{shown} is not {what}"
    return path, error.message


def _first_error(errors: Sequence[jsonschema.ValidationError]) -> jsonschema.ValidationError:
    """The error to report: the earliest in document order, the innermost at that place."""
    import jsonschema

    best: jsonschema.ValidationError | None = jsonschema.exceptions.best_match(errors)
    if best is None:  # pragma: no cover - best_match returns None only for no errors
        raise AssertionError("no errors")
    return best


def validate(raw: Any, shown: str) -> None:
    """Check the evaluated inventory against schemas/inventory.schema.json."""
    if not isinstance(raw, dict) or "__nixType" in raw:
        got = f"a {raw['__nixType']}" if isinstance(raw, dict) else f"a {type(raw).__name__}"
        names = {"a list": "a list", "a str": "a string", "a int": "an integer", "a NoneType": "null"}
        raise DeploymentError(shown, f"must evaluate to an attribute set with systems and instances, "
                              f"not {names.get(got, got)}")
    if "systems" not in raw and "instances" not in raw and _colmena_like(raw):
        raise DeploymentError(shown, "this looks like a Colmena hive (meta, a module per node): a nix-hive "
                              "deployment names its systems once (systems.<s>.configuration, a NixOS module) and "
                              "the instances that run them (instances.<i> = { system = \"<s>\"; ... }); "
                              "see docs/deployment.md, or `nix-hive init` for an example")
    accepts = _accepts()
    if accepts is not None and accepts(raw):
        return  # valid: jsonschema would find no error (tests/test_properties.py)
    errors = sorted(_validator().iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        path, message = _describe(_first_error(errors))
        raise DeploymentError(shown, message, attr_path(path) or None)


def _colmena_like(raw: Mapping[str, Any]) -> bool:
    """A Colmena hive: `meta` (or `defaults`) beside nodes that are modules (functions)."""
    functions = [k for k, v in raw.items() if isinstance(v, dict) and v.get("__nixType") == "function"]
    return "meta" in raw or ("defaults" in raw and bool(functions))


def _str_map(values: Mapping[str, Any]) -> dict[str, str]:
    return {k: (("yes" if v else "no") if isinstance(v, bool) else str(v)) for k, v in values.items()}


def build_model(raw: Mapping[str, Any], file: Path, shown: str,
                overrides: Mapping[str, str] | None = None, build_host: str | None = None,
                *, paths: bool = True) -> Hive:
    """The checks the schema cannot express, then the frozen model. `build_host` (the
    command line's) replaces every system's. Without `paths`, `raw` has its NIX_PATH entries
    unevaluated (NIX_HIVE_PATHS=lazy): they are named by the attribute that defines them."""
    given = overrides or {}
    top_paths = {**raw.get("paths", {}), **given}
    top_lazy: dict[str, str] = {}
    if not paths:
        top_lazy = {k: attr_path(["paths", k]) for k in raw.get("paths", {}) if k not in given}
        top_paths = dict(given)
    systems: dict[str, System] = {}
    for name, s in sorted(raw["systems"].items()):
        effective = {**top_paths, **s.get("paths", {}), **given}
        lazy: dict[str, str] = {}
        if not paths:
            own = {k: attr_path(["systems", name, "paths", k]) for k in s.get("paths", {})}
            lazy = {k: v for k, v in {**top_lazy, **own}.items() if k not in given}
            effective = dict(given)
        host = build_host or (s["buildHost"] if "buildHost" in s else raw.get("buildHost"))
        systems[name] = System(name=name, paths=frozen_map(effective), platform=s.get("system"),
                               tags=tuple(s.get("tags", ())), build_host=host, nixpkgs=s.get("nixpkgs"),
                               unevaluated=frozen_map(lazy))
    instances: dict[str, Instance] = {}
    known = ", ".join(sorted(systems)) or "none"
    # what an instance takes from its system and the deployment when it says nothing itself:
    # found once a system, not once an instance (issue 29)
    inherited = {name: Instance(name="", system=name, checks=_checks(s.get("checks", {})),
                                activation_timeout=_first(DEFAULT_ACTIVATION_TIMEOUT, "activationTimeout", s, raw),
                                confirm_timeout=_first(DEFAULT_CONFIRM_TIMEOUT, "confirmTimeout", s, raw),
                                reboot_timeout=_first(DEFAULT_REBOOT_TIMEOUT, "rebootTimeout", s, raw),
                                elevate=next((str(level["elevate"]) for level in (s, raw)
                                              if level.get("elevate") is not None), "sudo"))
                 for name, s in raw["systems"].items()}
    for name, i in sorted(raw["instances"].items()):
        if i["system"] not in systems:
            raise DeploymentError(shown, f"{json.dumps(i['system'])} is not a system of {shown} (systems: {known})",
                                  attr_path(["instances", name, "system"]))
        ssh = _str_map(i.get("ssh", {}))
        if "HostName" in ssh:
            if "Hostname" in ssh:
                raise DeploymentError(shown, "Hostname and HostName are one option: give it once",
                                      attr_path(["instances", name, "ssh"]))
            ssh["Hostname"] = ssh.pop("HostName")
        checks.addresses(shown, name, i.get("store"), ssh)
        checks.allowed_options(shown, name, ssh)
        s, up = raw["systems"][i["system"]], inherited[i["system"]]
        instances[name] = Instance(
            name=name, system=i["system"], store=i.get("store"), tags=tuple(i.get("tags", ())),
            ssh=frozen_map(ssh), host_key=i.get("hostKey"),
            checks=_checks({**s.get("checks", {}), **i["checks"]}) if "checks" in i else up.checks,
            activation_timeout=_first(up.activation_timeout, "activationTimeout", i),
            confirm_timeout=_first(up.confirm_timeout, "confirmTimeout", i),
            reboot_timeout=_first(up.reboot_timeout, "rebootTimeout", i),
            elevate=str(i["elevate"]) if i.get("elevate") is not None else up.elevate,
            keys=tuple(dict.fromkeys([*s.get("keys", ()), *i.get("keys", ())])))
    key: Path | None = None
    if raw.get("signingKey") is not None:
        key = Path(raw["signingKey"])
        checks.signing_key(shown, key)
    keys = {name: _key(name, k) for name, k in sorted(raw.get("keys", {}).items())}
    for name, k in sorted(raw.get("keys", {}).items()):
        if "keyCommandTimeout" in k and not keys[name].command:  # a limit on nothing: surely a mistake
            raise DeploymentError(shown, "only a keyCommand has a timeout, and this key's source is "
                                  f"{keys[name].source}", attr_path(["keys", name, "keyCommandTimeout"]))
    checks.key_sources(shown, keys, raw)
    uploads = {url: s["upload"] for url, s in sorted(raw.get("stores", {}).items())}
    checks.uploads(shown, uploads, instances)
    return Hive(file=file, shown=shown, paths=frozen_map(top_paths), systems=systems,
                instances=instances, signing_key=key, keys=keys, uploads=uploads, unevaluated=frozen_map(top_lazy))


def _checks(given: Mapping[str, Any]) -> tuple[Check, ...]:
    return tuple(_check(n, c) for n, c in sorted(given.items()))


def _check(name: str, c: Mapping[str, Any]) -> Check:
    return Check(name=name, command=c.get("command"), http=c.get("http"), timeout=c.get("timeout", 10),
                 retries=c.get("retries", 5), interval=c.get("interval", 2), status=tuple(c.get("status", ())))


def _key(name: str, k: Mapping[str, Any]) -> Key:
    return Key(name=name, destination=k.get("destination", f"/run/keys/{name}"),
               key_file=Path(k["keyFile"]) if "keyFile" in k else None, text=k.get("text"),
               command=tuple(k.get("keyCommand", ())), user=k.get("user", "root"), group=k.get("group", "root"),
               permissions=k.get("permissions", "0600"), upload_at=k.get("uploadAt", "pre-activation"),
               command_timeout=int(k.get("keyCommandTimeout", DEFAULT_KEY_COMMAND_TIMEOUT)))


def _first(default: int, key: str, *levels: Mapping[str, Any]) -> int:
    """The most specific level's value of `key` (instance, system, deployment)."""
    for level in levels:
        value = level.get(key)
        if value is not None:
            return int(value)
    return default


def evaluate(config: str | None, overrides: Mapping[str, str] | None = None, build_host: str | None = None,
             *, paths: bool = True) -> Hive:
    """Evaluate, validate and model the deployment named by `-c`; `build_host` is the
    command line's `--build-host`, for every system. `paths=False` (commands that build
    nothing) leaves the NIX_PATH entries unevaluated: a `fetchTarball` there needs the network."""
    where = locate(config)
    shown = where.shown
    locked = flake_inputs(where) if where.flake is not None else None
    env = {**nix.deployment_env(where.file, where.flake, where.attr), "NIX_HIVE_PATHS": "" if paths else "lazy"}
    try:
        raw = nix.eval_inventory(env, where.file.parent)
    except ProcessError as exc:
        raise DeploymentError(shown, f"cannot evaluate: {nix_message(exc.stderr)}",
                              _path_entry(exc.stderr)) from exc
    validate(raw, shown)
    hive = build_model(raw, where.file, shown, overrides, build_host, paths=paths)
    if where.flake is not None:
        hive = dataclasses.replace(hive, flake=where.flake, attr=where.attr, flake_inputs=locked)
    checks.jump_loops(hive)
    checks.ssh_config(hive)
    return hive


def input_files(hive: Hive, *, exclude: Iterable[Path | None] = ()) -> list[Path]:
    """The files a build of this deployment may read, whose change makes `--no build` build
    again: in a git work tree, the files git would see under the deployment's directory
    (tracked, or untracked and not ignored: the rule flakes use, plus new files); elsewhere,
    or when git ignores the deployment file itself, every file under it. Hidden files (.git,
    the state file) and links into the Nix store (`result`) never count."""
    skip = {p.resolve() for p in exclude if p is not None}
    listed = _git_files(hive.directory)
    if listed is not None and hive.file not in listed:
        listed = None  # git ignores the deployment itself (the demo's .lab/demo/hive): walk it
    if listed is None:
        listed = []
        for root, dirs, files in os.walk(hive.directory):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            listed += [Path(root, name) for name in files]
    found: list[Path] = []
    for path in sorted(set(listed)):
        rel = path.relative_to(hive.directory)
        if any(part.startswith(".") for part in rel.parts) or path in skip:
            continue
        if path.is_symlink() and os.readlink(path).startswith("/nix/store/"):
            continue
        if path.is_file():
            found.append(path)
    return found


def flake_inputs(where: Located) -> dict[str, Any]:
    """What a flake's builds depend on, as `nix flake metadata` reports it: its source (a
    store path named by the content of the flake's files: tracked ones, in a git work tree)
    and every locked input of its lock file. Like `nix build`, this writes the lock file when
    the flake has none or lacks an input (evaluation then reads it; it never updates one)."""
    assert where.flake is not None
    try:
        found = nix.flake_metadata(where.flake)
    except ProcessError as exc:
        raise DeploymentError(where.shown, f"cannot read the flake: {nix_message(exc.stderr)}") from exc
    nodes = found.get("locks", {}).get("nodes", {})
    return {"source": found.get("path"),
            "locked": {name: node.get("locked") for name, node in sorted(nodes.items()) if "locked" in node}}


def _git_files(directory: Path) -> list[Path] | None:
    """Files under `directory` that git sees, or None when it is not in a git work tree."""
    try:
        out = process.run(["git", "-C", str(directory), "ls-files", "-z", "--cached", "--others",
                           "--exclude-standard", "--", "."], check=False)
    except ProcessError:
        return None  # git is not installed
    if out.exit_code != 0:
        return None
    return [directory / name for name in out.stdout.split("\0") if name]
