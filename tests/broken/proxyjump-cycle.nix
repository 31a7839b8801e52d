# expect: instances.b.ssh.ProxyJump
# expect: jump hosts loop: a -> b -> a
{
  systems.www = { configuration = { }; };
  instances.a = { system = "www"; ssh.ProxyJump = "deploy@b:22"; };
  instances.b = { system = "www"; ssh.ProxyJump = "outside.example.com,a"; };
  instances.c = { system = "www"; ssh.ProxyJump = "a"; };
}
