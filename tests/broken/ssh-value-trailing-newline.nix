# expect: instances.web-1.ssh.IdentityFile: "/etc/hive/id\n" is not a single-line ssh_config value
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; ssh.IdentityFile = "/etc/hive/id\n"; };
}
