# expect: cannot evaluate: no address known for web-1
# expect: (at 
# expect: throw-in-instance.nix:6:
let
  addresses = { };
  address = name: addresses.${name} or (throw "no address known for ${name}");
in
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; ssh.Hostname = address "web-1"; };
}
