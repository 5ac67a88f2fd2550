package PAGI::Test::Simple;
# Helpers for t/simple-*.t. Most tests drive a PAGI::Simple app in process
# through PAGI::Test::Client (client); the end-to-end ones run it on
# PAGI::Server in this process (127.0.0.1, port 0) and make one HTTP request
# per connection with a raw socket, returning the parsed response (serve,
# request).
use strict;
use warnings;
use parent 'Exporter';
use PAGI::Test::Server qw(start_server stop_server raw_exchange parse_responses);
use PAGI::Test::Client;

our @EXPORT_OK = qw(client serve request);

# client($simple_app_or_pagi_coderef, %test_client_options) → PAGI::Test::Client
sub client {
    my ($app, %o) = @_;
    $app = $app->to_app if ref $app ne 'CODE';
    return PAGI::Test::Client->new(app => $app, %o);
}

# serve($simple_app_or_pagi_coderef, %server_options) → ($server, $port)
sub serve {
    my ($app, %o) = @_;
    $app = $app->to_app if ref $app ne 'CODE';
    return start_server(app => $app, %o);
}

# request($port, $method, $target, headers => [[name, value], ...], body => $bytes)
sub request {
    my ($port, $method, $target, %o) = @_;
    my @h = @{ $o{headers} || [] };
    my $body = $o{body};
    push @h, [ 'Content-Length', length $body ] if defined $body && !grep { lc $_->[0] eq 'content-length' } @h;
    my $req = "$method $target HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nConnection: close\r\n"
        . join('', map { "$_->[0]: $_->[1]\r\n" } @h) . "\r\n" . ($body // '');
    my $raw = raw_exchange($port, $req, timeout => $o{timeout} // 15)->get;
    my ($res) = parse_responses($raw, head => $method eq 'HEAD');
    $res->{raw} = $raw;
    $res->{all_headers} = sub { my $n = lc shift; [ map { $_->[1] } grep { $_->[0] eq $n } @{ $res->{headers} } ] };
    return $res;
}

1;
