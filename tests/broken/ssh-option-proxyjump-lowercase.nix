# expect: instances.web-1.ssh: "proxyjump" is not an ssh_config option name
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; ssh.proxyjump = "-oProxyCommand=x"; };
}
