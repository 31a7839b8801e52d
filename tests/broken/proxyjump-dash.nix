# expect: instances.web-1.ssh.ProxyJump: "-oProxyCommand=x" is not a jump host list
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; ssh.ProxyJump = "-oProxyCommand=x"; };
}
