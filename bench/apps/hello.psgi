# PSGI twin of hello.pl: same status, content type and body bytes.
# Content-Length is set here because the native server always sends one;
# without it Starman would have to compute it per request.
use strict; use warnings;
my $body = "Hello, World!\n";
my @headers = ('content-type' => 'text/plain', 'content-length' => length $body);
sub { [ 200, [@headers], [$body] ] };
