#!/usr/bin/env python3
"""Checks on what eval.nix reports for services.oknek; run.sh calls one subcommand per check.

Each subcommand exits 0 when the check holds and 1 with the reason otherwise.
"""

import json
import sys

import yaml

# Where the NixOS unit may differ from the appliance's (dist/systemd/oknekd.service): the binaries
# live in the store, /etc/oknek is built by NixOS rather than by ConfigurationDirectory=, and
# documentation and description name the NixOS guide.
NIXOS_DIFFERENCES = {"ConfigurationDirectory", "ConfigurationDirectoryMode", "Documentation", "Description"}


def read_unit(path):
    """A systemd unit file as {(section, key): [values]}, one entry per line of the key."""
    unit = {}
    section = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            unit.setdefault((section, key), []).append(value)
    return unit


def tokens(value):
    """A setting's words, whatever the spelling: one line or several, yes/true, list or string."""
    values = value if isinstance(value, list) else [value]
    words = []
    for v in values:
        if isinstance(v, bool):
            v = "yes" if v else "no"
        words.extend(str(v).split())
    return words


def program(command):
    """`/nix/store/…/bin/oknekd --config X` → ['oknekd', '--config', 'X']."""
    words = command.split()
    return [words[0].rsplit("/", 1)[-1]] + words[1:]


class Failed(Exception):
    pass


def require(condition, message):
    if not condition:
        raise Failed(message)


def load(path):
    with open(path) as f:
        return json.load(f)


def extract(report_path, out_dir):
    """Writes the rendered config and rule files; prints build-rules.sh --file arguments."""
    report = load(report_path)
    require(report["assertions"] == [], f"assertions failed: {report['assertions']}")
    with open(f"{out_dir}/oknek.yaml", "w") as f:
        f.write(report["configText"])
    for name, file in sorted(report["ruleFiles"].items()):
        if "text" in file:
            path = f"{out_dir}/files/{name}"
            with open(path, "w") as f:
                f.write(file["text"])
        else:
            path = file["source"]
        print(name)
        print(path)



def config_equal(rendered_path, handwritten_path):
    # BaseLoader resolves no types (`on` stays "on", 300 stays "300"), like a schema-driven reader;
    # both files go through the same loader, so only their structure and values are compared.
    with open(rendered_path) as f:
        rendered = yaml.load(f, Loader=yaml.BaseLoader)
    with open(handwritten_path) as f:
        handwritten = yaml.load(f, Loader=yaml.BaseLoader)
    require(
        rendered == handwritten,
        "rendered config differs from the hand-written one:\n"
        f"rendered:    {json.dumps(rendered, sort_keys=True)}\n"
        f"handwritten: {json.dumps(handwritten, sort_keys=True)}",
    )


def unit(report_path, appliance_unit, appliance_dropin, agent_unit):
    report = load(report_path)
    service = report["services"]["oknekd"]
    config = service["serviceConfig"]
    rendered = {("Service", k): v for k, v in config.items()}
    rendered[("Unit", "Wants")] = service.get("wants", [])
    rendered[("Unit", "After")] = service.get("after", [])
    rendered[("Unit", "Before")] = service.get("before", [])
    rendered[("Install", "WantedBy")] = service.get("wantedBy", [])
    appliance = read_unit(appliance_unit)
    for (section, key), values in appliance.items():
        if key in NIXOS_DIFFERENCES:
            continue
        got = rendered.get((section, key))
        require(got is not None, f"oknekd.service: [{section}] {key} of the appliance unit is missing")
        if key in ("ExecStart", "ExecReload"):
            require(program(got) == program(values[0]), f"{key}: {got!r} does not run what the appliance runs ({values[0]!r})")
        else:
            require(tokens(got) == tokens(values), f"oknekd.service: [{section}] {key} = {got!r}, the appliance has {values!r}")
    extra = {k for (_, k) in rendered} - {k for (_, k) in appliance} - NIXOS_DIFFERENCES
    require(not extra, f"oknekd.service: settings the appliance unit does not have: {sorted(extra)}")
    require(
        "/nix/store" not in config["ExecStart"].split(" ", 1)[1],
        "the unit must not name store paths of config or rules",
    )
    require(
        set(service["reloadTriggers"]) == {report["configFile"], report["rulesDir"]},
        f"reloadTriggers must be the config and the rules: {service['reloadTriggers']}",
    )
    require(service["stopIfChanged"] is False, "stopIfChanged must be false")
    require(
        report["etc"]["oknek/oknek.yaml"] == report["configFile"],
        "/etc/oknek/oknek.yaml must be the checked config",
    )
    require(report["etc"]["oknek/rules"] == report["rulesDir"], "/etc/oknek/rules must be the rule set")
    require("oknek/preload.conf" in report["etc"], "/etc/oknek/preload.conf is missing")

    # The agent's drop-in, as the appliance's template writes it.
    dropin = read_unit(appliance_dropin)
    agent = report["services"][agent_unit]
    for key, option in (("Wants", "wants"), ("After", "after")):
        require(
            agent.get(option, []) == dropin[("Unit", key)],
            f"{agent_unit}: {key} = {agent.get(option)!r}, the template has {dropin[('Unit', key)]!r}",
        )
    preload = agent["environment"].get("LD_PRELOAD", "")
    require(
        preload.endswith("/lib/liboknek_preload.so"),
        f"{agent_unit}: LD_PRELOAD should be the shim, got {preload!r}",
    )


def reload_only(before_path, after_path):
    before = load(before_path)["services"]["oknekd"]
    after = load(after_path)["services"]["oknekd"]
    require(before["reloadTriggers"] != after["reloadTriggers"], "a policy change must change the reload triggers")
    before_rest = {k: v for k, v in before.items() if k != "reloadTriggers"}
    after_rest = {k: v for k, v in after.items() if k != "reloadTriggers"}
    require(
        before_rest == after_rest,
        "a policy change must leave the unit itself unchanged (or switching restarts oknekd): "
        + json.dumps({k: (before_rest.get(k), after_rest.get(k)) for k in before_rest if before_rest.get(k) != after_rest.get(k)}),
    )


def assertions(report_path):
    failures = []
    for name, case in sorted(load(report_path).items()):
        failed = case["failed"]
        if len(failed) != 1 or case["expect"] not in failed[0]:
            failures.append(f"{name}: expected one failed assertion containing {case['expect']!r}, got {failed}")
        else:
            print(f"    {name}: {failed[0][:100]}…")
    require(not failures, "\n".join(failures))


def main():
    command, *args = sys.argv[1:]
    try:
        {
            "extract": extract,
            "config-equal": config_equal,
            "unit": unit,
            "reload-only": reload_only,
            "assertions": assertions,
        }[command](*args)
    except Failed as e:
        print(f"    {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
