# expect: cannot evaluate: [json.exception.parse_error.101] parse error at line 4, column 1
# expect: (at 
# expect: broken-json.nix:5:16)
let
  discovered = builtins.fromJSON (builtins.readFile ./bad.json);
in
{
  systems.web = { configuration = { }; };
  instances = builtins.mapAttrs (_: _: { system = "web"; }) discovered;
}
