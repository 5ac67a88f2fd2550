package PAGI::Test::Client::JSON;
use strict;
use warnings;

our $VERSION = '0.01';

=head1 NAME

PAGI::Test::Client::JSON - internal: the JSON codec of PAGI::Test::Client

=head1 DESCRIPTION

Internal to L<PAGI::Test::Client>. Uses L<JSON::MaybeXS> when it is
installed (Cpanel::JSON::XS underneath) and core L<JSON::PP> otherwise, so
the client runs wherever IO::Async does. Keys are sorted, so encoded
bodies are the same on every run.

=cut

my $CLASS = eval { require JSON::MaybeXS; JSON::MaybeXS::JSON() } || do { require JSON::PP; 'JSON::PP' };

my ($BYTES, $TEXT);

# For bodies: UTF-8 bytes in and out.
sub bytes { $BYTES //= $CLASS->new->utf8(1)->canonical(1)->allow_nonref(1) }

# For WebSocket text messages: characters in and out.
sub text { $TEXT //= $CLASS->new->utf8(0)->canonical(1)->allow_nonref(1) }

1;
