package PAGI::Simple::Session;
use v5.36;
use Carp ();
use Digest::SHA ();
use MIME::Base64 ();
use JSON::MaybeXS ();
use Cookie::Baker ();

our $VERSION = '0.01';

=head1 NAME

PAGI::Simple::Session - signed (optionally encrypted) cookie sessions for PAGI::Simple

=head1 SYNOPSIS

    my $app = PAGI::Simple->new(name => 'shop');
    $app->sessions(secrets => [ $new_secret, $old_secret ], expires => 3600);
    $app->get('/count' => sub ($c) { $c->text(++$c->session->{count}) });

=head1 DESCRIPTION

By default the whole session is a JSON document in a cookie, signed with
HMAC-SHA256 (L<Digest::SHA>) under the first of C<secrets>; every secret
verifies, so secrets rotate by putting a new one in front. A cookie whose
signature, encoding or expiry does not check out is ignored (the request gets
an empty session), never trusted. The cookie is written when the session
changed during the request (or C<< $c->session_clear >> was called).

Options of C<< $app->sessions(...) >>:

=over

=item secrets => [ ... ] (required; each at least 16 characters; newest first)

=item cookie_name => 'pagi_session'

=item expires => 1209600 (seconds; also in the signed payload, so an old cookie
replayed after its lifetime is rejected)

=item encrypt => 0

1: AES-256-GCM (L<Crypt::AuthEnc::GCM> from CryptX) instead of a plain
signature: the content is unreadable to the client as well as tamper-proof.

=item store => $store

Server-side sessions: the cookie then carries only a signed random id and the
data lives in C<$store>, an object with C<get($id)>, C<set($id, $data,
$expires_epoch)> and C<delete($id)>; L<PAGI::Simple::Session::Store::Memory> is
the in-process one.

=item path => '/', domain, samesite => 'Lax', httponly => 1, secure => 'auto'

C<secure> C<auto> sets the Secure attribute when the request came over https.

=back

=cut

my $JSON = JSON::MaybeXS->new(utf8 => 1, canonical => 1);

sub new ($class, %o) {
    my $secrets = $o{secrets};
    $secrets = [$secrets] if defined $secrets && !ref $secrets;
    Carp::croak("sessions: 'secrets' must be a non-empty list of secrets") unless ref $secrets eq 'ARRAY' && @$secrets;
    for (@$secrets) { Carp::croak("sessions: each of 'secrets' must be at least 16 characters") unless defined && length >= 16 }
    my %known = map { $_ => 1 } qw(secrets cookie_name expires encrypt store path domain samesite httponly secure);
    for (keys %o) { Carp::croak("sessions: unknown option '$_'") unless $known{$_} }
    require Crypt::AuthEnc::GCM if $o{encrypt};
    return bless { cookie_name => 'pagi_session', expires => 14 * 86400, path => '/', samesite => 'Lax',
        httponly => 1, secure => 'auto', %o, secrets => $secrets }, $class;
}

sub _b64 ($s) { MIME::Base64::encode_base64url($s) }
sub _unb64 ($s) { $s =~ /\A[A-Za-z0-9_-]*\z/ ? MIME::Base64::decode_base64url($s) : undef }
sub _sig ($payload, $secret) { Digest::SHA::hmac_sha256($payload, $secret) }
sub _enc_key ($secret) { Digest::SHA::sha256("pagi-simple-session-encryption\0$secret") }

sub _random_bytes ($n) {
    require Crypt::PRNG;
    return Crypt::PRNG::random_bytes($n);
}

# Constant-time comparison, so a forger learns nothing from timing.
sub _equal ($x, $y) {
    return 0 unless length $x == length $y;
    my $diff = 0;
    $diff |= ord(substr $x, $_, 1) ^ ord(substr $y, $_, 1) for 0 .. length($x) - 1;
    return $diff == 0;
}

sub encode_value ($self, $doc) {
    my $payload = $JSON->encode($doc);
    if ($self->{encrypt}) {
        my $iv = _random_bytes(12);
        my ($ct, $tag) = Crypt::AuthEnc::GCM::gcm_encrypt_authenticate('AES', _enc_key($self->{secrets}[0]), $iv, 'v1', $payload);
        return 'e1.' . _b64($iv . $tag . $ct);
    }
    my $p = _b64($payload);
    return "s1.$p." . _b64(_sig($p, $self->{secrets}[0]));
}

sub decode_value ($self, $value) {
    return undef unless defined $value;
    my $json;
    if ($value =~ /\Ae1\.([A-Za-z0-9_-]+)\z/ && $self->{encrypt}) {
        my $raw = _unb64($1) // return undef;
        return undef if length $raw < 29;
        my ($iv, $tag, $ct) = (substr($raw, 0, 12), substr($raw, 12, 16), substr($raw, 28));
        for my $secret (@{ $self->{secrets} }) {
            $json = Crypt::AuthEnc::GCM::gcm_decrypt_verify('AES', _enc_key($secret), $iv, 'v1', $ct, $tag);
            last if defined $json;
        }
    }
    elsif ($value =~ /\As1\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\z/) {
        my ($p, $sig) = ($1, _unb64($2));
        for my $secret (@{ $self->{secrets} }) {
            if (_equal(_sig($p, $secret), $sig)) { $json = _unb64($p); last }
        }
    }
    return undef unless defined $json;
    my $doc = eval { $JSON->decode($json) };
    return undef unless ref $doc eq 'HASH' && defined $doc->{exp} && $doc->{exp} =~ /\A\d+\z/;
    return undef if $doc->{exp} < time;
    return $doc;
}

# Called by $c->session: the session hashref for this request.
sub load ($self, $c) {
    my $doc = $self->decode_value($c->req->cookie($self->{cookie_name}));
    my $data = {};
    if ($doc) {
        if ($self->{store}) {
            $c->{session_id} = $doc->{id} if defined $doc->{id};
            $data = ($doc->{id} && $self->{store}->get($doc->{id})) || {};
        }
        else { $data = ref $doc->{d} eq 'HASH' ? $doc->{d} : {} }
    }
    $c->{session_snapshot} = $JSON->encode($data);
    $c->{session_had_cookie} = $doc ? 1 : 0;
    return $data;
}

# Called when the response starts: writes the cookie if the session changed.
sub save ($self, $c) {
    my $data = $c->{session} // return;
    my $clear = $c->{session_clear};
    return if !$clear && $JSON->encode($data) eq ($c->{session_snapshot} // '');
    my %attrs = (path => $self->{path}, samesite => $self->{samesite},
        ($self->{httponly} ? (httponly => 1) : ()),
        (defined $self->{domain} ? (domain => $self->{domain}) : ()),
        (($self->{secure} eq 'auto' ? $c->req->is_secure : $self->{secure}) ? (secure => 1) : ()));
    if ($clear || !%$data) {
        $self->{store}->delete($c->{session_id}) if $self->{store} && $c->{session_id};
        return unless $c->{session_had_cookie} || $clear;
        $c->res_header('set-cookie' => Cookie::Baker::bake_cookie($self->{cookie_name},
            { value => '', expires => 'Thu, 01 Jan 1970 00:00:00 GMT', 'max-age' => 0, %attrs }));
        return;
    }
    my $exp = time + $self->{expires};
    my $doc;
    if ($self->{store}) {
        my $id = $c->{session_id} //= unpack 'H*', _random_bytes(16);
        $self->{store}->set($id, $data, $exp);
        $doc = { id => $id, exp => $exp };
    }
    else { $doc = { d => $data, exp => $exp } }
    $c->res_header('set-cookie' => Cookie::Baker::bake_cookie($self->{cookie_name},
        { value => $self->encode_value($doc), 'max-age' => $self->{expires}, %attrs }));
}

package PAGI::Simple::Session::Store::Memory;
use v5.36;

=head1 NAME

PAGI::Simple::Session::Store::Memory - in-process server-side session store

=head1 DESCRIPTION

C<get($id)>, C<set($id, $data, $expires_epoch)>, C<delete($id)>; expired
entries are dropped when read. One process only (workers do not share it).

=cut

sub new ($class) { bless { data => {} }, $class }
sub get ($self, $id) {
    my $e = $self->{data}{$id} or return undef;
    if ($e->[1] < time) { delete $self->{data}{$id}; return undef }
    return $e->[0];
}
sub set ($self, $id, $data, $exp) { $self->{data}{$id} = [ $data, $exp ]; 1 }
sub delete ($self, $id) { delete $self->{data}{$id}; 1 }

1;
