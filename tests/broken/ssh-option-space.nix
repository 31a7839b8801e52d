# expect: instances.web-1.ssh: "User root" is not an ssh_config option name
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; ssh."User root" = "x"; };
}
