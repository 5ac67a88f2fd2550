# TLS introspection: answers with a plain-text report of $scope->{scheme} and
# every field of the `tls` scope extension (PAGI-SPEC 4), or says that the
# connection is not TLS. A WebSocket client gets the same report as a message.
# Run: perl -Mblib bin/pagi-server examples/08-tls-introspection/app.pl --port 5000
#      curl http://127.0.0.1:5000/   (cleartext: "not a TLS connection")
# With TLS, first a self-signed certificate for localhost and 127.0.0.1:
#      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout key.pem -out cert.pem
#      perl -Mblib bin/pagi-server examples/08-tls-introspection/app.pl --port 5000 --ssl-cert cert.pem --ssl-key key.pem
#      curl --cacert cert.pem https://127.0.0.1:5000/
# Client certificates: add --ssl-ca ca.pem --ssl-verify-client optional (or
# require) and give curl --cert client.pem --key client-key.pem; the report
# then shows the chain and the subject name. --ssl-min-version TLSv1_3 and
# --ssl-ciphers TLS13_CHACHA20_POLY1305_SHA256 change what is negotiated.
use strict;
use warnings;
use Future::AsyncAwait;

my %VERSION = (0x0300 => 'SSLv3', 0x0301 => 'TLS 1.0', 0x0302 => 'TLS 1.1', 0x0303 => 'TLS 1.2', 0x0304 => 'TLS 1.3');
my %SUITE = (
    0x1301 => 'TLS_AES_128_GCM_SHA256',
    0x1302 => 'TLS_AES_256_GCM_SHA384',
    0x1303 => 'TLS_CHACHA20_POLY1305_SHA256',
    0xC02B => 'TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256',
    0xC02C => 'TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384',
    0xCCA9 => 'TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256',
    0xC02F => 'TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256',
    0xC030 => 'TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384',
    0xCCA8 => 'TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256',
);

sub show { defined $_[0] ? $_[0] : '(undef)' }

sub coded {
    my ($value, $names) = @_;
    return '(undef)' unless defined $value;
    return sprintf '0x%04x (%s)', $value, $names->{$value} // 'unknown';
}

sub report {
    my ($scope) = @_;
    my $out = "scheme: " . show($scope->{scheme}) . "\n";
    my $tls = ($scope->{extensions} // {})->{tls};
    return $out . "not a TLS connection\n" unless $tls;

    my $chain = $tls->{client_cert_chain} // [];
    $out .= "tls_version: " . coded($tls->{tls_version}, \%VERSION) . "\n";
    $out .= "cipher_suite: " . coded($tls->{cipher_suite}, \%SUITE) . "\n";
    $out .= "client_cert_name: " . show($tls->{client_cert_name}) . "\n";
    $out .= "client_cert_error: " . show($tls->{client_cert_error}) . "\n";
    $out .= "client_cert_chain: " . scalar(@$chain) . " certificate(s)\n";
    $out .= "  [$_]" . ($_ ? '' : ' (leaf)') . ":\n$chain->[$_]" for 0 .. $#$chain;
    $out .= "server_cert:\n" . (defined $tls->{server_cert} ? $tls->{server_cert} : "(undef)\n");
    return $out;
}

async sub app {
    my ($scope, $receive, $send) = @_;
    if ($scope->{type} eq 'http') {
        await $send->({ type => 'http.response.start', status => 200,
                        headers => [ [ 'content-type', 'text/plain; charset=utf-8' ] ] });
        await $send->({ type => 'http.response.body', body => report($scope) });
        return;
    }
    die "Unsupported scope type: $scope->{type}\n" if $scope->{type} ne 'websocket';

    my $event = await $receive->();    # websocket.connect
    await $send->({ type => 'websocket.accept' });
    await $send->({ type => 'websocket.send', text => report($scope) });
    await $send->({ type => 'websocket.close', code => 1000 });
}

\&app;
