# expect: instances.portico.ssh.ProxyJump
# expect: jump hosts loop: portico -> portico
{
  systems.www = { configuration = { }; };
  instances.portico = { system = "www"; ssh.ProxyJump = "portico"; };
}
