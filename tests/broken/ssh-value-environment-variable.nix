# expect: instances.www-1.ssh.IdentityFile
# expect: no way to write '${' as it is
{
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; ssh.IdentityFile = "\${HOME}/.ssh/id"; };
}
