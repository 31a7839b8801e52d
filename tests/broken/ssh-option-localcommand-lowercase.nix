# expect: instances.web-1.ssh: "localcommand" is not an ssh_config option name
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; ssh = { permitlocalcommand = "yes"; localcommand = "touch /tmp/pwned"; }; };
}
