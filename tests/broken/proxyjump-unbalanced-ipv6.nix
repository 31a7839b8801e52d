# expect: instances.www-1.ssh.ProxyJump
# expect: ProxyJump '[2001:db8::1'
{
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; ssh.ProxyJump = "[2001:db8::1"; };
}
