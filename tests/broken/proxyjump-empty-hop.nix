# expect: instances.www-1.ssh.ProxyJump
# expect: is not a jump host list
{
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; ssh.ProxyJump = "portico,,inner"; };
}
