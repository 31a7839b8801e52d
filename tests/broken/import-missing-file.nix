# expect: cannot evaluate: getting status of
# expect: instances-missing.nix': No such file or directory
{
  systems.web = { configuration = { }; };
  instances = import ./instances-missing.nix;
}
