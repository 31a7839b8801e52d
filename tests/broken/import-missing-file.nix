# expect: cannot evaluate: 
# expect: instances-missing.nix'
{
  systems.web = { configuration = { }; };
  instances = import ./instances-missing.nix;
}
