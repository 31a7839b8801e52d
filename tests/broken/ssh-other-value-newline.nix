# expect: instances.web-1.ssh.IdentityFile: "/k\n  ProxyCommand sh -c x" is not a single-line ssh_config value
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; ssh.IdentityFile = "/k\n  ProxyCommand sh -c x"; };
}
