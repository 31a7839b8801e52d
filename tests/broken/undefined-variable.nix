# expect: cannot evaluate: undefined variable 'webConfig'
# expect: (at 
# expect: undefined-variable.nix:5:35)
{
  systems.web = { configuration = webConfig; };
  instances.web-1 = { system = "web"; };
}
