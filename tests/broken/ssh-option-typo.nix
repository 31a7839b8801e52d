# expect: instances.www-1.ssh.IdentitiesOnyl
# expect: is not an ssh option nix-hive takes
{
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; ssh.IdentitiesOnyl = "yes"; };
}
