//! Sealed secrets.

use tether_proto::pb;

use super::{Out, table, ts};

impl Out {
    pub fn secrets(&self, r: &pb::ListSecretsResponse) {
        if self.json(r, "tether.v1.ListSecretsResponse") {
            return;
        }
        table(
            &["NAME", "LATEST", "VERSIONS", "UPDATED"],
            r.secrets
                .iter()
                .map(|s| {
                    let versions: Vec<String> = s.versions.iter().map(ToString::to_string).collect();
                    vec![s.name.clone(), s.latest.to_string(), versions.join(","), ts(&s.updated_at)]
                })
                .collect(),
        );
    }

    pub fn secret(&self, r: &pb::GetSecretResponse) {
        if self.json(r, "tether.v1.GetSecretResponse") {
            return;
        }
        let s = r.secret.clone().unwrap_or_default();
        println!("name:       {}", s.name);
        println!("version:    {}", s.version);
        println!("created:    {}", ts(&s.created_at));
        println!("created by: {}", s.created_by);
        println!("sealed to:  {}", s.sealed_to.join(", "));
    }

    pub fn secret_recipients(&self, r: &pb::ListSecretRecipientsResponse) {
        if self.json(r, "tether.v1.ListSecretRecipientsResponse") {
            return;
        }
        table(
            &["NODE", "PUBLIC KEY"],
            r.recipients.iter().map(|x| vec![x.node_id.clone(), tether_auth::hex_encode(&x.public_key)]).collect(),
        );
    }
}
