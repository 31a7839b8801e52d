# expect: systems.web.paths.nixpkgs: "/src/nixpkgs\n-I evil=/tmp" is not a path or URL on one line
{
  systems.web = { configuration = { }; paths.nixpkgs = "/src/nixpkgs\n-I evil=/tmp"; };
  instances.web-1 = { system = "web"; };
}
