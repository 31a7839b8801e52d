# expect: instances.web-1.ssh.Hostname: "-oProxyCommand=x" is not a host name
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; ssh.Hostname = "-oProxyCommand=x"; };
}
