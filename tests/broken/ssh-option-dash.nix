# expect: instances.web-1.ssh: "Proxy-Command" is not an ssh_config option name
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; ssh.Proxy-Command = "sh -c x"; };
}
