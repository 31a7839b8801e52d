# expect: cannot evaluate: syntax error
# expect: (at 
# expect: syntax-error.nix:7:1)
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"
}
