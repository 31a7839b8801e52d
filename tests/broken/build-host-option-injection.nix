# expect: build-host-option-injection.nix: systems.web.buildHost: "-oProxyCommand=sh" is not an ssh host name not starting with -
{
  systems.web = { configuration = { }; buildHost = "-oProxyCommand=sh"; };
  instances.w = { system = "web"; };
}
