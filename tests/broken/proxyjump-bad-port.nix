# expect: instances.www-1.ssh.ProxyJump
# expect: port
{
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; ssh.ProxyJump = "deploy@portico:99999"; };
}
