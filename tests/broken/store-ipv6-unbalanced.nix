# expect: instances.www-1.store
{
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; store = "ssh://root@[2001:db8::1"; };
}
