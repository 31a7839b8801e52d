# nix-hive's pull agent (issue 32), a NixOS module: the host polls a binary cache for its newest
# signed deployment record and activates it by itself (hive/host/agent.sh; docs/pull-agent.md).
#
#   imports = [ nix-hive.nixosModules.agent ];   # or ./path/to/nix-hive/nix/agent.nix
#   services.nix-hive-agent = {
#     enable = true;
#     cache = "https://cache.example.org";
#     publicKey = "hive-1:…";                     # the deployment's signing key, public half
#   };
#
# The agent runs from a oneshot service started by a timer. Its own activations run in transient
# units of their own (activate.sh, as push mode's), so a switch that changes this service never
# cuts the poll that runs it: the service is not restarted by switch-to-configuration
# (restartIfChanged = false: NixOS leaves it running, and the next poll runs the new unit). A
# new system without the agent stops it mid-poll (a unit that is gone is stopped): nothing then
# confirms the activation and the host rolls back by itself, since such a system could never be
# managed again.
{ config, lib, pkgs, ... }:
let
  cfg = config.services.nix-hive-agent;
  inherit (lib) mkEnableOption mkIf mkOption types;
  # hive/host, beside this file, in the store: agent.sh with the scripts it runs
  scripts = builtins.path {
    name = "nix-hive-host";
    path = ../hive/host;
    filter = path: type: type == "regular" && builtins.match ".*\\.sh" (toString path) != null;
  };
in
{
  options.services.nix-hive-agent = {
    enable = mkEnableOption "nix-hive's pull agent: this host fetches its signed deployments from a binary cache";
    cache = mkOption {
      type = types.str;
      example = "https://cache.example.org";
      description = ''
        The binary cache's base URL as this host reaches it (nix-hive publish --to): its
        pointers are under nix-hive/pointers/, and Nix fetches the records and systems from it.
      '';
    };
    publicKey = mkOption {
      type = types.str;
      example = "hive-1:Vq3…=";
      description = ''
        The deployment's signing key, public half (name:base64): a record must be signed by it,
        whichever other keys this host trusts. It is added to nix.settings.trusted-public-keys.
      '';
    };
    instance = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = ''
        This host's instance name in the deployment (its records and status document). null
        (the default): read on the host when it polls, from /var/lib/nix-hive-agent/instance
        (one line, written when the host is installed), else the host's name (uname -n). A
        system that many instances share cannot hold each one's name: leave it null there.
      '';
    };
    statusUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = ''
        Where the agent PUTs its status document (STATUS/INSTANCE.json); null: the cache's
        nix-hive/status. The server must accept HTTP PUT there (nginx: dav_methods PUT).
      '';
    };
    interval = mkOption {
      type = types.str;
      default = "5min";
      description = "Time between two polls (a systemd time span), from the end of one poll's start.";
    };
    jitter = mkOption {
      type = types.str;
      default = "1min";
      description = "A random delay up to this long before each poll (RandomizedDelaySec), so that a fleet does not poll at once.";
    };
    confirmTimeout = mkOption {
      type = types.ints.positive;
      default = 60;
      description = ''
        Seconds after the switch within which the record's checks must pass and the cache must
        answer again; else the host rolls back by itself.
      '';
    };
    activationTimeout = mkOption {
      type = types.ints.positive;
      default = 600;
      description = "Seconds the switch (and the fetch of a system) may take; then it is stopped and the host rolls back.";
    };
  };

  config = mkIf cfg.enable {
    nix.settings.trusted-public-keys = [ cfg.publicKey ];

    systemd.services.nix-hive-agent = {
      description = "nix-hive pull agent: one poll of ${cfg.cache}";
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      path = [ config.nix.package pkgs.curl pkgs.util-linux pkgs.coreutils pkgs.gnugrep pkgs.gnused
               pkgs.findutils pkgs.diffutils pkgs.gawk pkgs.hostname config.systemd.package ];
      environment = {
        NIX_HIVE_CACHE = cfg.cache;
        NIX_HIVE_PUBLIC_KEY = cfg.publicKey;
        NIX_HIVE_INSTANCE = if cfg.instance == null then "" else cfg.instance;
        NIX_HIVE_CONFIRM = toString cfg.confirmTimeout;
        NIX_HIVE_TIMEOUT = toString cfg.activationTimeout;
        NIX_HIVE_STATE = "/var/lib/nix-hive-agent";
      } // (if cfg.statusUrl == null then { } else { NIX_HIVE_STATUS = cfg.statusUrl; });
      script = "exec /bin/sh ${scripts}/agent.sh";
      # its own switch must not restart nor stop it halfway (see the header)
      restartIfChanged = false;
      # no start rate limit: each poll is one start (a timer's, or an operator's `systemctl start`),
      # and systemd's default (5 starts in 10 s) would refuse the sixth
      startLimitIntervalSec = 0;
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = false;
        StateDirectory = "nix-hive-agent";
        # every step of a poll is bounded (fetch and switch: activationTimeout each; the
        # confirmation window; HTTP: 30 s a request); this bounds the whole
        TimeoutStartSec = 3 * cfg.activationTimeout + 2 * cfg.confirmTimeout + 300;
      };
    };

    systemd.timers.nix-hive-agent = {
      description = "nix-hive pull agent: poll every ${cfg.interval}";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnBootSec = cfg.interval;
        OnUnitActiveSec = cfg.interval;
        RandomizedDelaySec = cfg.jitter;
        # systemd's default accuracy (1 min) would delay each poll by up to a minute more than
        # interval + jitter (the lab saw 60 s with a 5 s interval)
        AccuracySec = "1s";
      };
    };
  };
}
